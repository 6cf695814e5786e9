"""The course glossary: every technical term of the source text, in English and Chinese (lesson 00).

Each :class:`Term` gives the English term, the source text's Chinese term (spelled exactly
as the source writes it; where the source uses only English, the term as the source writes
it), a one-line meaning, and the lesson that teaches it (0 to 11)::

    from course_lib import glossary
    glossary.show()           # every term, as a table in Jupyter
    glossary.show(lesson=4)   # the terms taught in lesson 04

Each lesson also ends with a table of its own terms, including terms the source text does not name.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LESSONS", "TERMS", "Term", "as_markdown", "show", "terms"]

#: Lesson titles, by lesson number. Defined in lesson 00.
LESSONS: tuple[str, ...] = (
    "How this course works",
    "Attention",
    "Tokens and model types",
    "GPU memory",
    "Number formats and quantization",
    "FlashAttention",
    "GQA and the KV cache",
    "Distributed training",
    "Fine-tuning and PEFT",
    "RLHF",
    "Inference optimization",
    "RAG",
)


@dataclass(frozen=True)
class Term:
    """One glossary entry. Defined in lesson 00.

    Attributes:
        english: the English term.
        chinese: the source text's term, spelled exactly as the source writes it.
        meaning: a one-line definition.
        lesson: the number of the lesson that teaches it, 0 to 11.
    """

    english: str
    chinese: str
    meaning: str
    lesson: int


_T = Term

#: Every term of the source text, ordered by lesson. Defined in lesson 00.
TERMS: tuple[Term, ...] = (
    # ---- 00 how this course works
    _T("byte", "字节", "8 bits, the unit of memory; a tensor takes numel × element size bytes (fp32: 4 bytes per element).", 0),
    _T("GB (gigabyte)", "GB", "10⁹ bytes; not the GiB (2³⁰ = 1,073,741,824 bytes) that GPU tools usually report: 4 GB ≈ 3.73 GiB.", 0),
    _T("1B (model size)", "1B", "One billion (10⁹) parameters; at 4 bytes each (fp32) the weights alone take 4 × 10⁹ bytes = 4 GB.", 0),
    _T("PyTorch", "PyTorch", "Python library for tensors on CPU and GPU with automatic differentiation; the framework this course uses.", 0),
    _T("TensorFlow", "TensorFlow", "Google's deep-learning framework, an alternative to PyTorch; both name dtypes float32, float16, bfloat16, int8.", 0),
    # ---- 01 attention
    _T("Transformer", "Transformer", "Neural-network architecture (Vaswani et al., 2017) of stacked multi-head self-attention and feed-forward layers with residual connections and normalization; the basis of LLMs.", 1),
    _T("self-attention", "自注意力", "Attention whose queries, keys and values all come from the same sequence, so each token gathers information from every token it may see; n² scores for n tokens.", 1),
    _T("attention", "注意力", "softmax(QKᵀ/√d)·V: each output is a weighted average of the value vectors, weighted by softmax-normalized query–key scores.", 1),
    _T("query (Q)", "Q", "A token's vector projected by a learned matrix, q = x·W_Q; it is scored against every key to decide where that token attends.", 1),
    _T("key (K)", "K", "A token's vector projected by a learned matrix, k = x·W_K; its dot product with a query gives their compatibility score.", 1),
    _T("value (V)", "V", "A token's vector projected by a learned matrix, v = x·W_V; attention outputs a weighted average of the values.", 1),
    _T("dot product", "点积", "q·k = Σᵢ qᵢkᵢ, the sum of elementwise products of two vectors; large when they point the same way.", 1),
    _T("compatibility score", "兼容性分数", "The score of a query against a key before softmax: q·k, divided by √d (d = key size) in Transformers.", 1),
    _T("softmax", "softmax", "softmax(x)ᵢ = exp(xᵢ) / Σⱼ exp(xⱼ): turns real scores into positive weights that sum to 1 (computed after subtracting max(x) to avoid overflow).", 1),
    _T("weighted average", "加权平均", "Σᵢ wᵢvᵢ with weights wᵢ ≥ 0 that sum to 1; attention's output is one over the value vectors.", 1),
    _T("mask", "掩码", "A pattern that hides positions: in attention, blocked query–key scores are set to −∞ before softmax (weight 0); in masked LM, chosen input tokens are replaced by [MASK].", 1),
    # ---- 02 tokens and model types
    _T("token", "token", "The smallest unit a language model reads and writes: a piece of text (word, subword, character or byte) that the tokenizer maps to an integer id in a fixed vocabulary.", 2),
    _T("embedding", "embedding", "A learned vector of d numbers that represents a token: row i of the embedding matrix (vocabulary size × d) for token id i.", 2),
    _T("encoder", "encoder", "A stack of Transformer layers that reads the whole input with bidirectional (unmasked) self-attention and returns one contextual vector per input token.", 2),
    _T("decoder", "decoder", "A stack of Transformer layers with causal self-attention that predicts each next token from those before it (in encoder-decoder models also attending to the encoder's output).", 2),
    _T("encoder-only model", "自编码模型", "Autoencoding model: a Transformer encoder with bidirectional attention, e.g. BERT, pretrained with masked LM; used for classification and embeddings, not free generation.", 2),
    _T("BERT", "BERT", "Bidirectional Encoder Representations from Transformers (Google, 2018): an encoder-only model pretrained with masked LM and next-sentence prediction.", 2),
    _T("masked language modeling", "Masked LM", "Pretraining objective: hide a random ~15% of the input tokens (BERT: 80% [MASK], 10% random, 10% unchanged) and predict the originals from context on both sides.", 2),
    _T("decoder-only model", "自回归模型", "Autoregressive model: a Transformer decoder with causal self-attention, e.g. GPT, trained by next-token prediction; it generates one token at a time, each conditioned on all before it.", 2),
    _T("GPT", "GPT", "Generative Pre-trained Transformer (OpenAI, from 2018): decoder-only models trained with causal language modeling.", 2),
    _T("causal language modeling", "因果语言建模", "Training to predict every token from the tokens before it only: a causal mask hides each position's later tokens, and all positions are trained at once.", 2),
    _T("encoder-decoder model", "encoder-decoder", "A Transformer whose encoder reads the input and whose decoder generates the output, attending to the encoder through cross-attention (original Transformer, T5, BART); used for translation and summarization.", 2),
    _T("T5", "T5", "Text-to-Text Transfer Transformer (Google, 2019): an encoder-decoder that casts every task as text to text, pretrained with span corruption.", 2),
    _T("span corruption", "连续多个token的掩码", "T5's pretraining objective: replace random spans of consecutive tokens with sentinel tokens and train the decoder to output the missing spans.", 2),
    _T("pretraining", "预训练", "Training a model from random initialization on a large unlabeled corpus with a self-supervised objective (next-token or masked-token prediction).", 2),
    # ---- 03 GPU memory
    _T("GPU memory", "显存", "The GPU's own memory (HBM or GDDR, 'VRAM') that must hold the weights, gradients, optimizer states and activations of the work it runs.", 3),
    _T("model parameters", "模型参数", "The trainable numbers of a model, all its weights and biases; '1B' means 10⁹ of them, and training sets their values.", 3),
    _T("weight matrix", "权重矩阵", "W in y = Wx + b: a linear layer's learned matrix, shape (outputs × inputs); entry Wᵢⱼ scales input j's contribution to output i.", 3),
    _T("bias", "偏置项", "b in y = Wx + b: a learned vector added to the layer's output, shifting each neuron's value before the activation function.", 3),
    _T("neuron", "神经元", "One output of a layer: a weighted sum of the inputs plus a bias, usually passed through a nonlinear activation function.", 3),
    _T("full precision", "全精度", "fp32, 32-bit floating point: 4 bytes per number, the usual precision of master weights and optimizer states in training.", 3),
    _T("inference", "推理", "Running a trained model forward to get outputs, with no gradients or optimizer states; for an LLM, reading the prompt and then generating tokens one by one.", 3),
    _T("Adam optimizer", "Adam优化器", "Keeps two running averages per parameter, of the gradient (m) and of its square (v), and steps by −lr·m̂/(√v̂ + ε); 8 bytes per parameter in fp32.", 3),
    _T("gradient", "梯度", "∂loss/∂θ for every parameter θ, computed by backpropagation and used by the optimizer; one number per parameter (4 bytes in fp32).", 3),
    _T("activations", "激活值", "Intermediate outputs of the forward pass kept for the backward pass; their memory grows with batch size and sequence length, not with parameter count alone.", 3),
    # ---- 04 number formats and quantization
    _T("quantization", "量化", "Mapping numbers from a high-precision format to a low-precision one (fp32 → fp16, int8, int4) through a scale factor (and zero-point), trading rounding error for fewer bytes.", 4),
    _T("half precision", "半精度", "16-bit floating point (fp16 or bf16): 2 bytes per number, half the memory of fp32.", 4),
    _T("scale factor", "缩放因子", "s in x ≈ s·q, mapping the source range onto the target range with q = round(x/s); symmetric int8 uses s = max|x|/127.", 4),
    _T("floating-point number", "浮点数", "A number stored as sign, exponent and mantissa, (−1)ˢ·2ᵉ·1.m, keeping roughly constant relative precision over a huge range.", 4),
    _T("sign bit", "符号位", "The leading bit of a float: 0 for positive, 1 for negative, giving the factor (−1)ˢ.", 4),
    _T("exponent", "指数", "The bits E storing the power of two with a bias: value = (−1)ˢ·2^(E − bias)·1.m, bias = 2^(k−1) − 1 for k bits (127 in fp32, 15 in fp16).", 4),
    _T("mantissa", "尾数", "The fraction bits after the implicit leading 1 (23 in fp32, 10 in fp16, 7 in bf16); n bits give a relative spacing (machine epsilon) of 2^−n.", 4),
    _T("dynamic range", "动态范围", "The span from the smallest to the largest magnitude a format can represent; set mainly by the number of exponent bits.", 4),
    _T("fp32", "fp32", "IEEE 754 single precision: 1 sign, 8 exponent, 23 mantissa bits; largest value ≈ 3.4 × 10³⁸, about 7 significant decimal digits.", 4),
    _T("fp16", "fp16", "IEEE 754 half precision: 1 sign, 5 exponent, 10 mantissa bits; largest value 65504, about 3 significant decimal digits.", 4),
    _T("bf16 (bfloat16)", "bfloat16", "Brain floating point: 1 sign, 8 exponent, 7 mantissa bits; fp32's range (to ≈ 3.4 × 10³⁸) with about 2–3 significant decimal digits.", 4),
    _T("fp8", "fp8", "8-bit floats in two standard layouts: E4M3 (4 exponent, 3 mantissa bits, max 448) and E5M2 (5 exponent, 2 mantissa bits, max 57344).", 4),
    _T("int8", "int8", "8-bit two's-complement integer, −128 to 127; quantized values x ≈ s·q share a scale factor s per tensor, channel or group.", 4),
    _T("int4", "int4", "4-bit integer, −8 to 7 (or 0 to 15 unsigned), two packed per byte; used for weight-only quantization with a scale per small group of weights.", 4),
    _T("precision loss", "精度损失", "The error caused by storing numbers in fewer bits, seen in the weights, in each layer's outputs and finally in model accuracy.", 4),
    # ---- 05 FlashAttention
    _T("FlashAttention", "FlashAttention", "Exact attention computed tile by tile in on-chip SRAM with an online softmax, never writing the n×n score matrix to GPU memory: O(n) extra memory, far less memory traffic, same O(n²) FLOPs.", 5),
    _T("IO-awareness", "IO-Awareness", "Designing an algorithm around the data moved between slow GPU memory (HBM) and fast on-chip SRAM, not only around FLOPs; the key idea of FlashAttention.", 5),
    # ---- 06 GQA and the KV cache
    _T("grouped-query attention (GQA)", "分组查询注意力", "Query heads are split into groups, each sharing one key head and one value head; between multi-head (one K/V per query head) and multi-query attention (one K/V for all), it shrinks the KV cache.", 6),
    # ---- 07 distributed training
    _T("distributed training", "分布式", "Training on several GPUs or machines at once by splitting the data, the model's parameters or its computation across them.", 7),
    _T("sharding", "分片", "Splitting tensors into pieces held by different devices, each device storing only its own shard.", 7),
    _T("DDP", "DDP", "Distributed Data Parallel: every GPU holds a full replica of model and optimizer, processes its own slice of each batch, and gradients are averaged by all-reduce during backward.", 7),
    _T("FSDP", "FSDP", "Fully Sharded Data Parallel: parameters, gradients and optimizer states are sharded across the N GPUs; each layer is all-gathered just in time, cutting per-GPU memory about N-fold for more communication.", 7),
    _T("communication overhead", "通信开销", "Time spent moving tensors between devices (all-reduce, all-gather, reduce-scatter) instead of computing; hidden in part by overlapping it with computation.", 7),
    # ---- 08 fine-tuning and PEFT
    _T("fine-tuning", "微调", "Continuing to train a pretrained model on a smaller, task- or domain-specific dataset.", 8),
    _T("evaluation", "评估", "Measuring a model's quality on held-out data with a metric such as loss, perplexity or accuracy.", 8),
    _T("instruction fine-tuning", "instruct fine-tuning", "Supervised fine-tuning on (instruction, response) pairs so that a pretrained model follows instructions; the loss usually covers the response tokens only.", 8),
    _T("base model", "基础模型", "A pretrained model not yet adapted to a task (also 'foundation model'); the starting point that fine-tuning and PEFT adapt.", 8),
    _T("full fine-tuning", "全量微调", "Fine-tuning that updates every parameter, so gradients and optimizer states are kept for all of them (16 bytes per parameter with fp32 Adam, before activations).", 8),
    _T("PEFT", "PEFT", "Parameter-efficient fine-tuning: freeze the pretrained weights and train only a small set of added or selected parameters (LoRA, prompt tuning, adapters).", 8),
    _T("freezing", "冻结", "Excluding parameters from training (requires_grad=False in PyTorch): no gradients and no optimizer states are kept for them.", 8),
    _T("catastrophic forgetting", "灾难性遗忘", "The loss of previously learned abilities when a network's weights are trained on new data; PEFT lessens it by leaving the base weights unchanged.", 8),
    _T("multi-tenancy", "多租户", "Serving many users or tasks from one copy of a base model in memory, each with its own small set of PEFT weights (e.g. a LoRA adapter) chosen per request.", 8),
    _T("LoRA", "LORA", "Low-rank adaptation: freeze W (d×k) and train B (d×r) and A (r×k), r ≪ min(d, k), so the layer computes Wx + (α/r)·BAx with r(d + k) trainable parameters instead of dk.", 8),
    _T("rank", "秩", "The number of linearly independent rows (or columns) of a matrix; LoRA's update BA, with inner dimension r, has rank at most r.", 8),
    _T("low-rank", "低秩", "Of rank r much smaller than the matrix's dimensions: a d×k matrix of rank r factors into (d×r)·(r×k), r(d + k) numbers instead of dk.", 8),
    _T("Stable Diffusion", "Stable Diffusion", "Latent text-to-image diffusion model (2022); LoRA adapters for it commonly capture one character or style.", 8),
    _T("QLoRA", "QLORA", "LoRA on a base model whose frozen weights are stored in 4-bit NF4 (with double quantization) and dequantized on the fly; only the 16-bit LoRA matrices are trained.", 8),
    _T("prompt", "提示", "The input text given to a language model, which it continues or answers.", 8),
    _T("prompt tuning", "Prompt Tuning", "PEFT method that prepends a few trainable vectors (a 'soft prompt', not vocabulary tokens) to the input embeddings and trains only them, the model frozen.", 8),
    # ---- 09 RLHF
    _T("RLHF", "RLHF", "Reinforcement learning from human feedback: fit a reward model to human preferences between responses, then optimize the LLM for that reward (e.g. PPO) with a KL penalty keeping it near the start.", 9),
    _T("human annotations", "人类注释", "Judgments written by people, in RLHF usually rankings or pairwise preferences between model responses, from which the reward model learns.", 9),
    _T("alignment", "对齐", "Steering a model's behaviour toward what people intend and prefer (helpful, honest, harmless), beyond what pretraining gives.", 9),
    # ---- 10 inference optimization
    _T("inference optimization", "推理优化", "Making a trained model cheaper or faster to run (pruning, quantization, distillation, efficient kernels) while keeping its accuracy.", 10),
    _T("pruning", "剪枝", "Removing the least important weights (unstructured, usually smallest magnitude) or whole neurons, heads or layers (structured); zeros save memory and time only with sparse formats or kernels.", 10),
    _T("SparseGPT", "sparseGPT", "One-shot post-training pruning (Frantar & Alistarh, 2023): prunes GPT-scale models layer by layer to 50–60% sparsity, updating the remaining weights with inverse-Hessian information, no retraining.", 10),
    _T("post-training quantization (PTQ)", "训练后量化", "Quantizing a trained model's weights (and possibly activations) using at most a small calibration set, without further training.", 10),
    _T("GPTQ", "GPTQ", "PTQ method (Frantar et al., 2022) that quantizes each layer's weights column by column, correcting the remaining columns with inverse-Hessian information from calibration inputs to keep the layer's output; 3–4-bit weights.", 10),
    _T("Optimum", "Optimum", "Hugging Face library of hardware and performance tools for Transformers models, including GPTQ quantization.", 10),
    _T("distillation", "蒸馏", "Training a small student model to reproduce a large teacher model's output distribution (e.g. KL divergence to its temperature-softened probabilities), often with the true-label loss too.", 10),
    _T("teacher model", "Teacher模型", "In distillation, the large trained model whose outputs supervise the student.", 10),
    _T("student model", "Student模型", "In distillation, the smaller model trained to imitate the teacher: cheaper to run, with some accuracy lost.", 10),
    # ---- 11 RAG
    _T("AI-native application", "AI Native Application", "Software built around an LLM as its core component, rather than an existing program with AI added.", 11),
    _T("RAG", "RAG", "Retrieval-augmented generation: retrieve passages relevant to the question from an external collection (usually by embedding similarity) and add them to the prompt, so the model can use data it was not trained on.", 11),
)

del _T


def _check_lesson(lesson) -> None:
    if lesson is None:
        return
    if isinstance(lesson, bool) or not isinstance(lesson, int) or not 0 <= lesson < len(LESSONS):
        raise ValueError(f"lesson must be None or an int lesson number from 0 to {len(LESSONS) - 1}, got {lesson!r}")


def terms(lesson: int | None = None) -> tuple[Term, ...]:
    """The glossary entries, ordered by lesson: all of them, or those taught in exactly ``lesson``.

    ``lesson`` is ``None`` (every term) or a lesson number from 0 to 11; anything else
    raises ``ValueError``. Defined in lesson 00.
    """
    _check_lesson(lesson)
    if lesson is None:
        return TERMS
    return tuple(t for t in TERMS if t.lesson == lesson)


def _cell(text: str) -> str:
    """``text`` made safe for one Markdown table cell: on one line, with ``|`` and emphasis marks escaped."""
    text = " ".join(str(text).split())
    for char in ("\\", "|", "*", "_", "`", "$"):
        text = text.replace(char, "\\" + char)
    return text


def as_markdown(entries=None) -> str:
    """A Markdown table of ``entries`` (default: every term), one row per entry, in the given order.

    Columns: English, Chinese (as the source text writes it), meaning, lesson. ``|`` and
    other Markdown marks in the text are escaped. ``entries`` must be an iterable of
    :class:`Term`; anything else raises ``ValueError``. Defined in lesson 00.
    """
    if entries is None:
        entries = TERMS
    if isinstance(entries, (str, bytes, Term)):
        raise ValueError(f"entries must be an iterable of Term, got {type(entries).__name__}")
    try:
        entries = list(entries)
    except TypeError:
        raise ValueError(f"entries must be an iterable of Term, got {type(entries).__name__}") from None
    for entry in entries:
        if not isinstance(entry, Term):
            raise ValueError(f"entries must contain only Term objects, got {type(entry).__name__}: {entry!r}")
    lines = [
        "| English | Chinese (source text) | Meaning | Lesson |",
        "|---|---|---|---|",
    ]
    for t in entries:
        lines.append(f"| {_cell(t.english)} | {_cell(t.chinese)} | {_cell(t.meaning)} | {t.lesson:02d} |")
    return "\n".join(lines)


def show(lesson: int | None = None) -> None:
    """Display the glossary (every term, or those of ``lesson``) as a Markdown table in Jupyter.

    Outside Jupyter IPython prints the table's text. Defined in lesson 00.
    """
    _check_lesson(lesson)
    from IPython.display import Markdown, display

    display(Markdown(as_markdown(terms(lesson))))
