"""The durable stores: SQLite and PostgreSQL, on one SQL layer.

=================  ==============================================================
``sqlite``         :class:`SQLiteStore`: one file, WAL and ``synchronous=FULL``
``postgres``       :class:`PostgresStore`: a cluster's shared state (psycopg 3)
``base``           :class:`SqlStore`: the concepts' classes together, and the
                   error translation of every Store method
``accounts``       a concept: its tables and the Store methods over them, whose
``social``         SQL and logic are the same on both databases (most of them):
``rooms``          accounts and sessions; invitations, friends and blocks;
``messages``       rooms; messages, cursors, retention and the quota; devices'
``devices``        keys and encrypted messages' records
``primitives``     what a concept's SQL is written against: the four ways to run
                   a statement, the hooks, a few helpers
``statements``     the long statements both run, each written once
``dialect``        the small step from the shared SQL to each database's
``schema``         how a table is declared (``Table``, ``Column`` ...)
``tables``         every table, gathered from the concepts: each database's DDL,
                   and what ``udpchat-server migrate`` copies; a test holds each
                   store's migrations to it
``derive``         what is declared and an older database lacks (a table, a
                   column, an index), added when a store opens it
=================  ==============================================================

A store module holds only what its database does its own way: the connection,
transactions and savepoints, error translation, caches, migrations and the
statements that differ (``add_message`` on the hot path). A new Store method is
the Protocol (``udpchat_proto.chat.store``), the memory store and one method in
its concept's module here, beside the tables it reads and writes (and a new
column of theirs, declared once).

Import a store from its own module: the PostgreSQL one needs psycopg (the
``postgres`` extra), the SQLite one nothing beyond the standard library.
"""
