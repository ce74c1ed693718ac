"""Where a trial runs, as ``conf/launcher`` names it: ``local`` spawns it in a child process of
this one (also how a bench row and the GPU check's budget runs are measured), ``ray`` sends it to
a Ray worker that claims one GPU and spawns the same child there."""
