"""Reading files other people wrote: the restricted torch reader, ImageNet weight files, and building a
model whose weights are loaded next."""
