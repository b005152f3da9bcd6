"""`make run`: the whole mesh on one machine, under one supervisor."""
