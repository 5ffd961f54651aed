"""The ``steelseg-*`` commands: each parses its arguments, calls one library function, prints.

One module per command (``steelseg-predict`` is :mod:`steelseg.cli.predict`, and so on);
:mod:`steelseg.cli.common` holds the options several take and the exit codes. Heavy packages
(torch, Lightning) are imported only after parsing, so every ``--help`` answers at once.
"""
