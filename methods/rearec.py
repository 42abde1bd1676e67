"""ReaRec (Tang et al. 2025, "Think before Recommend: Unleashing the Latent Reasoning Power for Sequential
Recommendation", arXiv 2503.22675): a SASRec encoder that thinks for ``K`` latent steps before it ranks
(method ``rearec``, setting ``scheme=erl|prl``).

The encoder is SASRec's: item embedding + absolute position embedding, layer norm and dropout, then
post-norm causal Transformer layers (``nn.MultiheadAttention``, GELU feed-forward), and it scores items by
``h · e_item`` with the input item table. ReaRec then feeds the last layer's state back as one more input
token, plus a *reasoning position embedding* ``r_k`` (one learned vector per step, apart from the item
positions, so that the model can tell thinking inputs from items; paper Eq. 4), and runs the layers again;
after ``K`` steps there are ``K + 1`` states ``h_0`` (plain SASRec) ... ``h_K``. Every training position
reasons for itself in the same pass: its step tokens attend to the items up to that position and to its own
earlier steps, never to another position's thoughts (:func:`reasoning_mask`), so the state at position ``t``
depends on ``items[:t + 1]`` only, as the base class requires.

Two learning schemes, as implemented here (defaults from the official code, github.com/TangJiakai/ReaRec;
how each differs from the paper and that code is listed below):

- **ERL** (Ensemble Reasoning Learning): the mean-pooled state is trained against the target,
  ``CE(mean_k h_k E^T / tau)`` (Sec. 3.2.1, Eq. 5-6 and 8, as the official code), and a KL diversity
  regulariser ``- lambda * sum_{i<j} KL(p_i || p_j)`` (``p_k`` the step's softmax over items; paper Eq. 7-8)
  keeps the steps from collapsing onto one view;
  inference ranks with the mean of ``h_0..h_K`` (Sec. 3.2.3). ``tau = 0.07``; ``lambda = 0.05``
  (``diversity_weight``, the official default; the paper tunes it over {0.001, 0.005, 0.01, 0.05, 0.1}).
- **PRL** (Progressive Reasoning Learning): progressive temperature annealing, step ``k`` is trained with
  ``CE(h_k E^T / tau_k)``, ``tau_k = tau * alpha^(K - k)`` (Eq. 9; soft early, sharp at the last step;
  ``alpha = 5``, ``temperature_decay``), summed over steps (Eq. 10); and reasoning-aware contrastive
  learning: a second pass whose reasoning inputs carry Gaussian noise (standard deviation ``gamma = 0.01``,
  ``noise``; step ``k``'s noisy input is the clean ``h_{k-1} + r_k`` plus noise, Eq. 11 and the official
  code) must match each noisy state ``h~_k`` (k >= 1) to its own clean ``h_k`` against the clean states of
  the batch's other sequences (InfoNCE on dot products / ``tau``, summed over steps, Eq. 12; weight
  ``contrastive_weight = 1``, Eq. 13), after ``warmup = 2`` epochs without it. Inference ranks with the
  last step ``h_K`` (Sec. 3.3.3).

``K = 0`` is plain SASRec with a full-softmax CE over ``h_0 E^T / tau`` under either scheme.

Where this differs from the paper (v3, Aug 2025) or the official code, and why:
- Data and protocol: the paper uses Yelp (20-core) and Amazon *2023* Video & Games, Software, CDs & Vinyl,
  Baby & Products, ratings > 3 only, split by absolute timestamps, every validation/test interaction (with
  5+ history items, all seen in training) an example, NDCG/Recall@{10, 20} (Sec. 4.1). Here: the suite's
  leave-last-out split (one validation and one test target per user, every rating kept), Hit/NDCG@{5, 10}.
  Both rank all items and keep history items as candidates. The paper reports no Beauty/Sports/Toys result.
- Training examples: the official code trains one (last 50 items, next item) pair per training
  interaction and reasons after the history's last item. Here, as for the suite's SASRec and HSTU, every
  position of a user's last ``max_len + 1`` training items is an example (:mod:`baselines.sequential`)
  with its own ``K`` reasoning tokens, in one pass per step instead of one pass per prefix, which is what
  makes ReaRec affordable on a CPU. The prefixes are the same for users with at most ``max_len + 1``
  training items; for longer ones (SASRec's convention) older targets are never trained on and early
  positions see less than ``max_len`` items of history. The contrastive term's in-batch negatives are the
  other sequences' states at the same position and step (the official: the other examples of the batch).
- ERL diversity (``diversity``): by default the official code's, ``lambda`` times the *mean* over ordered
  pairs of ``KL(p_j || stopgrad(p_i))``. ``diversity=paper`` is Eq. 7 as written,
  ``- lambda * sum_{i<j} KL(p_i || p_j)`` with gradients through both, about 3x as strong at the same
  ``lambda`` for ``K = 2`` (3 summed pairs against the mean of 6); on Amazon Beauty and Sports it ran away
  (the loss fell without bound and validation NDCG@10 with it), so it is not the default.
- Temperature: the paper's Eq. 5 (ERL) has none and its PRL ``tau`` is tuned over {0.05, ..., 5.0}
  (Sec. 4.1.4; chosen values not reported, Fig. 6 favours a moderate one); ``tau = 0.07`` is the official
  default, used here for both schemes' CE and for the contrastive term.
- PRL ranking loss: Eq. 10 sums the steps' CE, as here; the official code adds the last step's CE to the
  *mean* of the earlier steps' CE (equal for ``K = 1``).
- PRL contrastive term: Eq. 12 sums over steps, as here; the official code averages over them (half this
  term for ``K = 2``). Eq. 11 writes the noise as ``N(0, gamma I)`` (variance ``gamma``); the official code
  and this use standard deviation ``gamma``.
- PRL warm-up: the paper has none. The official code's ``warmup`` (2 epochs without noise) cannot run: its
  PRL loss then reads an undefined contrastive term (so it runs only with ``warmup = 0``), and its ERL reads
  an undefined noise setting after the warm-up. Here the warm-up epochs train PRL without that term.
- PRL's two passes share their dropout masks (the noise is drawn first, then both start from one random
  state), so that the views differ by the noise alone, the perturbation the method is about. The official
  code stacks the views into one batch and so drops out different units in each; with its dot-product
  similarity at ``tau = 0.07`` that difference swamps the 0.01 noise and the contrastive term then fights
  the ranking loss (successor-pattern test data, 8 epochs: best validation NDCG@10 0.54 with separate masks,
  1.00 with shared ones).
- The reference caches keys and values between steps; so do the layers here (:class:`SASRecLayer`), which
  is why they are built from ``nn.MultiheadAttention`` rather than ``nn.TransformerEncoderLayer``.
  The reference applies layer norm and a fixed input dropout of 0.2 before each step (Eq. 4 has neither),
  as here, where one ``dropout`` setting serves the inputs and the layers (0.5 in the Amazon profiles).
  Its training softmax also counts the padding row as a candidate; here padding is never one.
- Sizes: the paper (Sec. 4.1.4, 4.3.3) uses width 256, batches of 2,048 examples, Adam at 1e-3, length 50,
  ``K = 2``, early stopping after 10 epochs without gain; the code adds feed-forward 300, 2 layers, 2 heads,
  dropout 0.5, up to 300 epochs, stopping on validation NDCG@20. Profile ``paper`` keeps the width, ``small``
  uses the suite's 64 (feed-forward 256); both stop on validation NDCG@10 (the suite's rule) within 200.
  ``batch_size`` counts sequences (each up to ``max_len`` examples): 256 Amazon 2014 5-core users give
  about 1,350-1,500 examples (5.3-5.9 training targets a user), fewer than the reference's 2,048.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from baselines.sequential import TRAINING_SETTINGS, SequenceEncoder, SequentialRecommender
from bench.errors import GRBenchError
from bench.registry import register_method
from bench.split import PADDING_ITEM

SCHEMES = ("erl", "prl")
LAYER_NORM_EPS = 1e-12  # the reference's (BERT's) epsilon
INIT_STD = 0.02  # the reference's initializer range


def reasoning_mask(length: int, blocks: int, device: torch.device | None = None) -> torch.Tensor:
    """Boolean attention mask (True = blocked) over ``blocks`` blocks of ``length`` tokens.

    Block 0 holds the items at positions ``0..length-1``; block ``k >= 1`` holds reasoning step ``k`` of each
    position. A token at position ``t`` sees the items ``0..t`` and the reasoning tokens of position ``t`` up
    to its own step: one forward pass reasons for every prefix at once, each prefix only about itself.
    """
    position = torch.arange(length, device=device).repeat(blocks)
    block = torch.arange(blocks, device=device).repeat_interleave(length)
    query_position, key_position = position[:, None], position[None, :]
    query_block, key_block = block[:, None], block[None, :]
    item_so_far = (key_block == 0) & (key_position <= query_position)
    own_earlier_step = (key_block > 0) & (key_position == query_position) & (key_block <= query_block)
    return ~(item_so_far | own_earlier_step)


class SASRecLayer(torch.nn.Module):
    """One post-norm Transformer layer as SASRec (RecBole) and the ReaRec reference build it:
    ``y = LN(x + Dropout(Attention(x, memory)))``, ``out = LN(y + Dropout(W2 GELU(W1 y)))``.

    Keys and values come from ``memory``, the layer's inputs of every token so far (``x`` last), like the
    reference's key/value cache: a reasoning step computes its new tokens only. ``nn.TransformerEncoderLayer``
    attends within its input alone, which would re-run every earlier token (and redraw its dropout) per step.
    """

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.attention = torch.nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.attention_dropout = torch.nn.Dropout(dropout)
        self.attention_norm = torch.nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.feed_forward = torch.nn.Sequential(torch.nn.Linear(dim, ffn), torch.nn.GELU(), torch.nn.Linear(ffn, dim),
                                                torch.nn.Dropout(dropout))
        self.output_norm = torch.nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, Q, D)`` attends to ``memory`` ``(B, M, D)`` where ``mask`` ``(Q, M)`` is False."""
        attended, _ = self.attention(x, memory, memory, attn_mask=mask, need_weights=False)
        x = self.attention_norm(x + self.attention_dropout(attended))
        return self.output_norm(x + self.feed_forward(x))


class ReaRecEncoder(SequenceEncoder):
    """SASRec layers that reason ``steps`` times at every position; ``forward`` gives the ranking state."""

    def __init__(self, n_items: int, dim: int, layers: int, heads: int, ffn: int, max_len: int, dropout: float,
                 steps: int, combine: str | tuple[int, ...]) -> None:
        super().__init__(n_items, dim)
        self.steps, self.combine = steps, combine
        self.position_embedding = torch.nn.Embedding(max_len, dim)
        self.reasoning_position_embedding = torch.nn.Embedding(steps, dim)  # r_1..r_K, apart from item positions
        self.input_norm = torch.nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.input_dropout = torch.nn.Dropout(dropout)
        self.layers = torch.nn.ModuleList(SASRecLayer(dim, heads, ffn, dropout) for _ in range(layers))
        self.apply(_initialise)
        self.item_embedding.weight.data[PADDING_ITEM] = 0.0

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        return self.input_dropout(self.input_norm(x))

    def reason(self, items: torch.Tensor, noise: float = 0.0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """States of every position and step, ``(B, L, K + 1, D)`` (step 0 is plain SASRec), and, when
        ``noise > 0``, those of a second pass whose reasoning inputs carry Gaussian noise of that standard
        deviation (step ``k``'s input is the clean ``h_{k-1} + r_k`` plus noise), else None.

        The noise is drawn first, ``(K, B, L, D)``; both passes then start from the same random state, so
        in training they drop out the same units and differ by the noise alone.
        """
        if noise <= 0:
            return self._chain(items), None
        perturbation = noise * torch.randn(self.steps, *items.shape, self.item_embedding.embedding_dim,
                                           device=items.device)
        with torch.random.fork_rng(devices=[items.device] if items.device.type == "cuda" else []):
            clean = self._chain(items)
        return clean, self._chain(items, clean, perturbation)

    def _chain(self, items: torch.Tensor, clean: torch.Tensor | None = None,
               perturbation: torch.Tensor | None = None) -> torch.Tensor:
        """One reasoning pass, ``(B, L, K + 1, D)``; step ``k``'s input is built from ``clean`` states and
        ``perturbation[k - 1]`` when given (the noisy view), else from the pass's own previous step."""
        length = items.shape[1]
        mask = reasoning_mask(length, self.steps + 1, items.device)
        memories: list[list[torch.Tensor]] = [[] for _ in self.layers]  # each layer's inputs, block by block
        positions = torch.arange(length, device=items.device)
        x = self._inputs(self.item_embedding(items) + self.position_embedding(positions))
        states = []
        for step in range(self.steps + 1):
            block = mask[step * length:(step + 1) * length, :(step + 1) * length]
            for layer, memory in zip(self.layers, memories):
                memory.append(x)
                x = layer(x, torch.cat(memory, dim=1), block)
            states.append(x)
            if step < self.steps:
                previous = x if clean is None else clean[:, :, step]
                thought = previous + self.reasoning_position_embedding.weight[step]
                x = self._inputs(thought if perturbation is None else thought + perturbation[step])
        return torch.stack(states, dim=2)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """The state that ranks items: the mean of all steps (``combine="mean"``, ERL), the last step (``"last"``,
        PRL), or, for ``benchmarks/rearec_steps.py``, the mean of the steps a tuple names (``(0,)``: the SASRec
        state alone)."""
        states, _ = self.reason(items)
        if isinstance(self.combine, str):
            return states.mean(dim=2) if self.combine == "mean" else states[:, :, -1]
        return states[:, :, list(self.combine)].mean(dim=2)


def _initialise(module: torch.nn.Module) -> None:
    """The reference's initialisation: Normal(0, 0.02) weights, zero biases, unit layer norms."""
    if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
        module.weight.data.normal_(0.0, INIT_STD)
    if isinstance(module, torch.nn.Linear) and module.bias is not None:
        module.bias.data.zero_()
    if isinstance(module, torch.nn.MultiheadAttention):  # its q/k/v projection is a bare parameter
        module.in_proj_weight.data.normal_(0.0, INIT_STD)
        module.in_proj_bias.data.zero_()
    if isinstance(module, torch.nn.LayerNorm):
        module.weight.data.fill_(1.0)
        module.bias.data.zero_()


def step_log_probs(states: torch.Tensor, item_vectors: torch.Tensor, temperatures: torch.Tensor) -> torch.Tensor:
    """Each step's log softmax over items: states ``(P, K + 1, D)``, item vectors ``(n, D)``, one temperature
    per step ``(K + 1,)`` -> ``(P, K + 1, n)``. Dividing the states, not the logits, saves a pass over the
    largest tensor of training."""
    return F.log_softmax((states / temperatures[:, None]) @ item_vectors.T, dim=-1)


def _supervision(log_probs: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """``mean_p sum_k -log p_k(target)`` from ``(P, K + 1, n)`` log probabilities and ``(P,)`` target columns."""
    index = positives[:, None, None].expand(-1, log_probs.shape[1], 1)
    return -log_probs.gather(2, index).sum((1, 2)).mean()


DIVERSITY_FORMS = ("official", "paper")


def erl_diversity(log_probs: torch.Tensor, form: str) -> torch.Tensor:
    """ERL's diversity between the steps' item distributions ``p_k`` (``log_probs`` ``(P, K + 1, n)``), batch mean.

    ``paper``: Eq. 7 as written, ``sum_{i<j} KL(p_i || p_j)`` with gradients through both sides. ``official``:
    the official code's mean over ordered pairs of ``KL(p_j || stopgrad(p_i))``. Maximised without a bound,
    the paper's form ran away on Amazon Beauty and Sports (GPU run 1: loss -471 and -1055 after 10 epochs,
    validation NDCG@10 falling from the first epoch on), so the official form is the default."""
    steps = log_probs.shape[1]
    if steps < 2:  # no reasoning step: nothing to spread
        return log_probs.new_zeros(())
    probs = log_probs.exp()
    if form == "paper":
        # KL(p_i || p_j) = sum_n p_i log p_i - sum_n p_i log p_j: every cross term in one batched product
        cross = torch.einsum("pin,pjn->pij", probs, log_probs)
        i, j = torch.triu_indices(steps, steps, offset=1, device=log_probs.device)
        return (cross[:, i, i] - cross[:, i, j]).sum(1).mean()
    # [p, j, i] = sum_n p_j log p_i with p_i held fixed; the diagonal is each step's own negative entropy
    cross = torch.einsum("pjn,pin->pji", probs, log_probs.detach())
    own = (probs * log_probs).sum(-1)  # (P, K + 1)
    others = ~torch.eye(steps, dtype=torch.bool, device=log_probs.device)
    return (own[:, :, None] - cross)[:, others].mean()


def erl_loss(states: torch.Tensor, item_vectors: torch.Tensor, positives: torch.Tensor, temperature: float,
             diversity_weight: float, diversity: str = "official") -> torch.Tensor:
    """ERL: ``mean_p [CE(mean_k h_k E^T / tau) - lambda * diversity(p_0..p_K)]`` (:func:`erl_diversity`); states
    ``(P, K + 1, D)``, targets ``positives`` as columns of ``item_vectors`` ``(n, D)``. The CE is on the pooled
    state that inference ranks with; the diversity term acts on each step's own distribution."""
    steps = states.shape[1]
    log_probs = step_log_probs(states, item_vectors, torch.full((steps,), temperature, device=states.device))
    supervision = F.cross_entropy((states.mean(1) / temperature) @ item_vectors.T, positives)
    return supervision - diversity_weight * erl_diversity(log_probs, diversity)


def annealed_temperatures(temperature: float, decay: float, steps: int) -> torch.Tensor:
    """PRL's ``tau_k = tau * alpha^(K - k)`` for k = 0..K: the last step has ``tau``, earlier ones are softer."""
    return temperature * decay ** torch.arange(steps, -1, -1, dtype=torch.float32)


def prl_loss(states: torch.Tensor, item_vectors: torch.Tensor, positives: torch.Tensor, temperature: float,
             decay: float) -> torch.Tensor:
    """PRL's progressive term ``mean_p sum_k CE(h_k E^T / tau_k)``; arguments as :func:`erl_loss`."""
    temperatures = annealed_temperatures(temperature, decay, states.shape[1] - 1).to(states.device)
    return _supervision(step_log_probs(states, item_vectors, temperatures), positives)


# Rows of examples per chunk of the fused loss: a (16, K + 1, n_items) block of logits stays in a CPU's cache
# (2.3 MB for K = 2 on Beauty), where the autograd form keeps several (P, K + 1, n_items) tensors: ERL 2.7x and PRL
# 2.3x faster on one core for a Beauty batch (`benchmarks/rearec_loss.py`). On a GPU larger chunks mean fewer
# kernel launches; 1,024 rows make blocks of about 225 MB on Sports (18,357 items).
FUSED_CHUNK_ROWS = {"cpu": 16, "cuda": 1024}


class _FusedStepSoftmaxLoss(torch.autograd.Function):
    """:func:`erl_loss` (official diversity) or :func:`prl_loss` with the gradient computed in the forward pass,
    chunk by chunk, from its closed form; see :func:`fused_reasoning_loss`.

    With ``z_k = h_k E^T / tau_k``, ``p_k = softmax(z_k)``, ``l_k = log p_k`` and one-hot target ``y``:
    PRL: ``dL/dz_k = p_k - y``. ERL: the pooled CE gives ``(softmax(mean_k z_k) - y) / S`` to every step
    (``S = K + 1``; the pooled logits are the mean of the steps' logits because ERL's steps share ``tau``), and
    the official diversity ``c * sum_j <p_j, a_j>`` with ``a_j = S l_j - sum_i l_i`` (the other steps' ``l_i``
    held fixed) and ``c = 1 / (S (S - 1))`` gives ``c * p_j * (a_j - <p_j, a_j>)``: the gradient of a
    ``p``-weighted sum of log-probabilities whose only live term is ``l_j``.
    Written by hand because torch has no fused softmax-over-a-matmul loss on CPU (the GPU libraries that fuse
    linear + cross-entropy, such as Liger's, are Triton kernels and know no ERL diversity term).
    """

    @staticmethod
    def forward(ctx: Any, states: torch.Tensor, item_vectors: torch.Tensor, positives: torch.Tensor,
                temperatures: torch.Tensor, pooled: bool, diversity_weight: float, chunk: int) -> torch.Tensor:
        count, steps, dim = states.shape
        scaled_states = states / temperatures[:, None]
        grad_states = torch.empty_like(states)
        grad_items = torch.zeros_like(item_vectors)
        total = torch.zeros((), dtype=torch.float64, device=states.device)
        diversity_scale = diversity_weight / (steps * (steps - 1)) if steps > 1 else 0.0
        for start in range(0, count, chunk):
            scaled = scaled_states[start:start + chunk]
            rows = torch.arange(len(scaled), device=states.device)
            target = positives[start:start + chunk]
            logits = scaled @ item_vectors.T  # (c, S, n)
            if pooled:  # ERL
                log_pooled = torch.log_softmax(logits.mean(1), dim=-1)
                total -= log_pooled[rows, target].sum().double()
                grad_pooled = log_pooled.exp_()
                grad_pooled[rows, target] -= 1.0
                grad = (grad_pooled / steps)[:, None, :].expand_as(logits)
                if diversity_scale > 0:
                    log_probs = torch.log_softmax(logits, dim=-1)
                    probs = log_probs.exp()
                    weighted = probs * (steps * log_probs - log_probs.sum(1, keepdim=True))  # p_j * a_j
                    expected = weighted.sum(-1, keepdim=True)
                    total -= diversity_scale * expected.sum().double()
                    grad = grad - diversity_scale * (weighted - probs * expected)
            else:  # PRL
                log_probs = torch.log_softmax(logits, dim=-1)
                total -= log_probs[rows, :, target].sum().double()
                grad = log_probs.exp()
                grad[rows, :, target] -= 1.0
            grad_states[start:start + chunk] = (grad @ item_vectors) / temperatures[:, None]
            grad_items.addmm_(grad.reshape(-1, grad.shape[-1]).T, scaled.reshape(-1, dim))
        ctx.save_for_backward(grad_states / count, grad_items / count)
        return (total / count).to(states.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_states, grad_items = ctx.saved_tensors
        return grad_states * grad_output, grad_items * grad_output, None, None, None, None, None


def fused_reasoning_loss(states: torch.Tensor, item_vectors: torch.Tensor, positives: torch.Tensor,
                         settings: dict[str, Any], chunk: int | None = None) -> torch.Tensor:
    """The training loss of ERL (official diversity) or PRL's ranking term, equal in value and gradient to
    :func:`erl_loss` / :func:`prl_loss` (the readable definitions, which tests hold it to) in under half the
    time on a CPU and a fraction of the memory: it never keeps a ``(P, K + 1, n_items)`` tensor.
    States ``(P, K + 1, D)``."""
    steps = states.shape[1]
    if settings["scheme"] == "erl":
        temperatures = torch.full((steps,), settings["temperature"], device=states.device)
    else:
        temperatures = annealed_temperatures(settings["temperature"], settings["temperature_decay"],
                                             steps - 1).to(states.device)
    rows = chunk or FUSED_CHUNK_ROWS.get(states.device.type, FUSED_CHUNK_ROWS["cpu"])
    return _FusedStepSoftmaxLoss.apply(states, item_vectors, positives, temperatures.to(states.dtype),
                                       settings["scheme"] == "erl", float(settings["diversity_weight"]), rows)


def reasoning_contrastive_loss(clean: torch.Tensor, noisy: torch.Tensor, real: torch.Tensor,
                               temperature: float) -> torch.Tensor:
    """InfoNCE of each noisy step state ``h~_k`` (k >= 1) against the clean ``h_k`` of every real sequence
    of the batch at the same position: ``(B, L, K + 1, D)`` states, ``real`` ``(B, L)``. Summed over
    steps, averaged over real positions."""
    anchors = noisy[:, :, 1:].permute(1, 2, 0, 3)  # (L, K, B, D)
    candidates = clean[:, :, 1:].permute(1, 2, 0, 3)
    similarity = anchors @ candidates.transpose(-1, -2) / temperature  # (L, K, anchor, candidate)
    present = real.T[:, None, None, :]  # padded rows are no candidates
    log_probs = F.log_softmax(similarity.masked_fill(~present, float("-inf")), dim=-1)
    own = log_probs.diagonal(dim1=-2, dim2=-1)  # (L, K, B): each anchor's own clean state
    return -own.masked_fill(~real.T[:, None, :], 0.0).sum() / real.sum()


MODEL_SETTINGS = ("scheme", "reasoning_steps", "dim", "layers", "heads", "ffn", "dropout", "temperature",
                  "diversity_weight", "diversity", "temperature_decay", "noise", "contrastive_weight", "warmup")
REASONING = {"scheme": "erl", "reasoning_steps": 2, "temperature": 0.07, "diversity_weight": 0.05,
             "diversity": "official", "temperature_decay": 5.0, "noise": 0.01, "contrastive_weight": 1.0, "warmup": 2,
             "optimizer": "adam", "learning_rate": 1e-3, "weight_decay": 0.0}
PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {**REASONING, "warmup": 1, "dim": 16, "layers": 1, "heads": 1, "ffn": 32, "dropout": 0.2,
              "max_len": 10, "epochs": 2, "patience": 2, "batch_size": 64, "eval_batch_size": 512},
    # CPU budget (ml-100k's 943 users, about 2 minutes): SASRec's usual MovieLens size; batches of 32 sequences
    # at lr 3e-3, because 10 epochs of 8 steps (batch 128, lr 1e-3) left it at validation NDCG@10 0.037, still
    # climbing, where 30 steps an epoch reach 0.05 by epoch 5 (ERL, 7-11 s an epoch on one busy core).
    "quick": {**REASONING, "learning_rate": 3e-3, "dim": 64, "layers": 2, "heads": 2, "ffn": 256, "dropout": 0.2,
              "max_len": 50, "epochs": 15, "patience": 5, "batch_size": 32, "eval_batch_size": 512},
    # Amazon 2014 (Beauty, Sports, Toys): the paper's recipe (K = 2, Adam lr 1e-3, max length 50, patience 10)
    # with the official code's defaults (dropout 0.5, 2 layers, 2 heads; it allows 300 epochs, 200 here) at
    # the width of the suite's SASRec and HSTU rows on these data (64).
    # On ml-100k (943 training rows, 4 steps an epoch) it stops undertrained: test NDCG@10 0.0348 against
    # 0.0475 with ``rearec:batch_size=32`` (one CPU core each, commit 5aae6a5; docs/history.md).
    "small": {**REASONING, "dim": 64, "layers": 2, "heads": 2, "ffn": 256, "dropout": 0.5, "max_len": 50,
              "epochs": 200, "patience": 10, "batch_size": 256, "eval_batch_size": 2048},
}
# The paper's own width: embedding 256 (feed-forward 300, the official default).
PROFILES["paper"] = {**PROFILES["small"], "dim": 256, "ffn": 300}


@register_method
class ReaRec(SequentialRecommender):
    name = "rearec"
    family = "id-based"
    description = ("ReaRec (Tang et al. 2025): SASRec that reasons K latent steps before ranking all item ids; "
                   "scheme=erl (ensemble, default) or prl (progressive)")
    profiles = PROFILES
    required_settings: ClassVar[tuple[str, ...]] = TRAINING_SETTINGS + MODEL_SETTINGS
    epoch = 0  # the training epoch under way (see begin_epoch): the contrastive term waits for the warm-up

    @classmethod
    def variant(cls, settings: dict[str, Any]) -> str:
        words = f"{settings['scheme'].upper()}, {settings['reasoning_steps']} reasoning steps"
        if settings["scheme"] == "erl" and settings["diversity"] == "paper":
            words += ", paper's diversity term"
        return words

    @classmethod
    def check_settings(cls, settings: dict[str, Any]) -> None:
        super().check_settings(settings)
        if settings["scheme"] not in SCHEMES:
            raise GRBenchError(f"rearec: scheme {settings['scheme']!r} unknown; expected one of {', '.join(SCHEMES)}")
        if settings["diversity"] not in DIVERSITY_FORMS:
            raise GRBenchError(f"rearec: diversity {settings['diversity']!r} unknown; expected one of "
                               f"{', '.join(DIVERSITY_FORMS)}")
        if settings["layers"] < 1 or settings["heads"] < 1 or settings["dim"] % settings["heads"]:
            raise GRBenchError(f"rearec: need layers >= 1 and dim divisible by heads, got layers={settings['layers']}, "
                               f"dim={settings['dim']}, heads={settings['heads']}")
        if not 0.0 <= settings["dropout"] < 1.0:
            raise GRBenchError(f"rearec: dropout must be in [0, 1), got {settings['dropout']}")
        for key in ("reasoning_steps", "diversity_weight", "noise", "contrastive_weight", "warmup"):
            if settings[key] < 0:
                raise GRBenchError(f"rearec: {key} must not be negative, got {settings[key]}")
        if settings["temperature_decay"] <= 0:
            raise GRBenchError(f"rearec: temperature_decay must be positive, got {settings['temperature_decay']}")

    def build_encoder(self, n_items: int) -> ReaRecEncoder:
        s = self.settings
        return ReaRecEncoder(n_items, s["dim"], s["layers"], s["heads"], s["ffn"], s["max_len"], s["dropout"],
                             s["reasoning_steps"], combine="mean" if s["scheme"] == "erl" else "last")

    def begin_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def contrastive(self) -> bool:
        """Whether this epoch's PRL loss has its noisy second pass (after the warm-up, with a step to perturb)."""
        s = self.settings
        return (s["scheme"] == "prl" and s["reasoning_steps"] > 0 and s["noise"] > 0 and s["contrastive_weight"] > 0
                and self.epoch >= s["warmup"])

    def loss_is_per_position(self) -> bool:
        """PRL's contrastive term takes its negatives from the batch's other sequences, so its batch stays whole."""
        return not self.contrastive()

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """ERL's or PRL's loss over the real positions of a ``(B, L)`` batch (targets 0 are padding)."""
        s = self.settings
        real = targets != PADDING_ITEM
        clean, noisy = self.encoder.reason(inputs, noise=s["noise"] if self.contrastive() else 0.0)
        items = self.all_item_vectors()
        positives = targets[real] - 1  # column i of the item vectors is item i + 1
        if s["scheme"] == "erl" and s["diversity"] == "paper":  # gradients through both sides: autograd's
            return erl_loss(clean[real], items, positives, s["temperature"], s["diversity_weight"], "paper")
        loss = fused_reasoning_loss(clean[real], items, positives, s)
        if noisy is not None:
            loss = loss + s["contrastive_weight"] * reasoning_contrastive_loss(clean, noisy, real, s["temperature"])
        return loss
