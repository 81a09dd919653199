"""``udpchat-cli chat``: the full-screen chat.

===============  ===============================================================
``link``         :class:`ChatLink`: one ``ClientConnection`` on the asyncio loop
                 that reconnects, resumes and resends by itself
``model``        :class:`ChatModel`: conversations, unread counts, presence (no
                 screen)
``commands``     what a typed line means: text to send, or a ``/command``
``app``          :class:`ChatApp`: the Textual screen that draws them
===============  ===============================================================

Nothing is imported here: Textual takes a good part of a second to load, and only
the ``chat`` command, which imports :mod:`.app` itself, pays for it.
"""
