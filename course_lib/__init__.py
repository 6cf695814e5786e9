"""course_lib: the reference code of the course "All you need about LLMs".

One module per idea; each function's docstring names the lesson that teaches it.

- ``device``      lesson 00: which device to compute on, seeding
- ``glossary``    lesson 00 (and every lesson after): the source text's terms
- ``tables``      lesson 00 (and every lesson after): tables of results, shown formatted
- ``memory``      lesson 00 (bytes of a tensor); lesson 03: parameter counts, memory estimates and measurements
- ``attention``   lesson 01: softmax, scaled dot-product attention, masks, multi-head attention
- ``data``        lesson 02: the synthetic world every later lesson trains and tests on
- ``tokenizer``   lesson 02: byte-pair encoding from scratch, saved for Hugging Face
- ``models``      lesson 02: decoder-only, encoder-only and encoder-decoder Transformers; Llama conversion
- ``kvcache``     lessons 02 and 06: the KV cache, sampling and generation
- ``train``       lesson 02: the training loop
- ``evaluation``  lesson 02: perplexity and exact-match accuracy
- ``pretrain``    lesson 02: the recipes of the course's pretrained checkpoints
- ``flash``       lesson 05: FlashAttention in PyTorch: online softmax, tiles, recomputation
- ``kernels``     lesson 05: a FlashAttention forward kernel in Triton (optional)
- ``formats``     lesson 04: fp32, fp16, bf16 and fp8 bit by bit
- ``quant``       lesson 04: absmax, zero-point, per-block, NF4 and LLM.int8()-style quantization
- ``distributed`` lesson 07: worker processes, DDP, ZeRO 1-3, FSDP2 and tensor parallelism, bytes counted
- ``finetune``    lesson 08: instruction tuning (chat template, tasks, response-only loss), task accuracy, forgetting, memory
- ``lora``        lesson 08: LoRA layers, injection, merging, several adapters on one base; adapters to and from peft
- ``qlora``       lesson 08: a frozen NF4 base for LoRA, double quantization; bitsandbytes and peft on the CPU
- ``prompt_tuning`` lesson 08: trainable virtual tokens in front of a frozen model
- ``rlhf``        lesson 09: learning from preferences (reward models, RLHF) and from verifiable rewards
- ``pruning``     lesson 10: weight statistics, magnitude, 2:4, Wanda and SparseGPT pruning, sparse storage
- ``gptq``        lesson 10: round-to-nearest and GPTQ quantization, block by block
- ``int4``        lesson 10: packed int4 weights, their bytes, and a Triton int4 matmul (optional)
- ``distill``     lesson 10: knowledge distillation, a student trained on a teacher's probabilities
- ``speculative`` lesson 10: speculative decoding, a draft model checked by the target
- ``retrieval``   lesson 11: BM25 (and SQLite FTS5), dense retrieval with faiss, fusion, recall@k and MRR
- ``rag``         lesson 11: passages, chunks, prompts within a token budget, the reader model, facts newer than the model
- ``checks``      the checks that grade the exercises (``checks.guard``: what each exercise's answer may not call)
- ``grading``     release, autograde and self-check with nbgrader; the learner edition; notebook timings
- ``autograde``   lesson 00: grading a notebook without trusting it (test cells judged in the grader)
- ``sandbox``     lesson 00: the separate, isolated process a graded notebook's cells run in
- ``wire``        lesson 00: the data that may come back from that process
- ``classroom``   INSTRUCTORS.md: grading a class, each submission in its own process, with a report
"""

__version__ = "0.1.0"
