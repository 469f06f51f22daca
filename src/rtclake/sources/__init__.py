"""Sources: where records come from. Each reads its transport and hands what it received
to the intake (:mod:`rtclake.intake`); ``base`` holds the validation they share."""
