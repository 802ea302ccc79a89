"""SlimBERT, the checkpoint format of a head-pruned BERT: `configuration_slimbert` (the config, light to import)
and `modeling_slimbert` (the model). Both are copied beside the weights of every SlimBERT checkpoint."""
