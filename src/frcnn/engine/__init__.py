"""Running training: the recipes' stage graph, proposal files, resume, loggers, the sweep summary, pre-
training the small backbone."""
