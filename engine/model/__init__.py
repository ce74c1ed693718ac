"""The model and its checkpoints: a folder in the released S1-mini layout opened strictly
(``checkpoint``) and described (``checkpoint_report``), synthetic ones made with seeded random
weights (``synthetic``), the upstream ``fish-speech`` classes built and loaded (``upstream``, with
the tokenizer files they need in ``tokenizer_files``), and their linear layers quantized
(``quantize``)."""
