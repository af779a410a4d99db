"""Kind ``hf``: a GPT-2/GPT-Neo/GPT-NeoX causal language model from the Hugging Face hub (or a
local folder), fitted on chunks of a tokenized text dataset (rule tokenize_dataset)."""
