"""A tiny random Llama and a byte-level BPE tokenizer, built in code.

Saved to a directory and loaded back through ``AutoModel`` and
``AutoTokenizer``: the same path as a real model, in a fraction of a second.
"""

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel, PreTrainedTokenizerFast

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A good movie, a great film, an awful plot, a bad ending.",
    "Input: Predict a score: similarity A: B:",
]


def build_tiny_llama(directory, hidden_size=32, seed=0, causal=False):
    """Save the model (with an LM head if ``causal``) and its tokenizer."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        CORPUS * 3,
        trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<eos>"],
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                            show_progress=False),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>",
                                        eos_token="<eos>")
    torch.manual_seed(seed)
    model_class = LlamaForCausalLM if causal else LlamaModel
    model = model_class(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size,
        intermediate_size=2 * hidden_size, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id)).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)
