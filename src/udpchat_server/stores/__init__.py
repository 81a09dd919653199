"""The SQL stores: one layer under SQLite and PostgreSQL.

=================  ==============================================================
``schema``         the tables, declared once (each database's DDL, what
                   ``udpchat-server migrate`` copies), checked against the
                   migrations by a test
``dialect``        the shared SQL's small step to each database's
=================  ==============================================================

Import a store from its own module: the PostgreSQL one needs psycopg (the
``postgres`` extra), the SQLite one nothing beyond the standard library.
"""
