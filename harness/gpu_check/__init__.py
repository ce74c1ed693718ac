"""``fishbench gpu-check``: what a lent GPU must show, in parts that each fit one short call.

A lent GPU machine is fresh, offline and timed: each part (``plan.PARTS``) runs in at most
8 minutes there, starts with the environment and the synthetic checkpoint (made once, kept), and
writes its own report; parts share one compile cache folder, so a later part starts warm on the
graphs an earlier one built. ``--dry-run`` runs every part on the CPU with the tiny checkpoint,
compiled rows compiled, and writes the same files (CI runs it).

``plan`` holds the parts and their sizes, ``steps`` what each step measures, ``report`` the
Markdown and JSON it writes, ``cli`` the command line.
"""
