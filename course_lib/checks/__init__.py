"""Checks that grade the exercises, one module per lesson topic.

- ``basics``     lesson 00
- ``attention``  lesson 01
- ``tokenizer``  lesson 02 (a BPE merge step)
- ``models``     lesson 02 (next-token loss, masking rule, cached generation)
- ``memory``     lesson 03 (parameters, model states, KV-cache bytes)
- ``formats``    lesson 04 (fp16 decoding, rounding to bf16)
- ``quant``      lesson 04 (absmax int8, per-block int4)
- ``flash``      lesson 05 (online softmax update, one tile step, causal tile skipping)
- ``kvcache``    lesson 06 (repeat K/V heads, KV-cache bytes from a config, a cached decode step)
- ``distributed`` lesson 07
- ``finetune``   lesson 08
- ``rlhf``       lesson 09
- ``compression`` lesson 10 (2:4 mask, Wanda score, one GPTQ column step, distillation loss,
  the speculative accept-or-resample rule, a quantized model)
- ``rag``        lesson 11 (a BM25 score, cosine top-k, recall@k and MRR, word chunks with overlap,
  a prompt within a token budget; the capstone: a retriever that finds the answering sentence)
"""
