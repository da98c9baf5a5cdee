"""Defenses that are randomized or not differentiable, evaluated as their authors' reviewers would.

A model entry (or ``benchmark.evaluate`` / ``regress``) declares two things the evaluator cannot
see for itself:

``randomized: {eot: 20, draws: 5}``
    The model's output is random (noise injection, random resizing, dropout at inference).
    Attacks that support it average the loss gradient over ``eot`` samples (expectation over
    transformation, Athalye et al. 2018: our APGD family and mm5, with AutoAttack's ``rand``
    version as their reference).  **Decision rule**: an example's prediction is the class most of
    ``draws`` independent forward passes predict (ties: the higher mean softmax probability); it is
    correct when that class is the label.  Clean and robust outcomes, the trust checks and the
    escalation all use this rule.  The draws of an example are seeded by the example's own pixels
    (and ``seed``), so its prediction is the same whatever batch it is in, in any run.
    A model whose output changes between two identical calls and that declares nothing is
    refused (:func:`require_declared`), never evaluated as if it were deterministic.

``input_transform: {kind: quantize, bits: 1}`` (also ``jpeg`` with ``quality``, ``median`` with
``size``, ``gaussian-noise`` with ``sigma`` (randomized), or ``python`` with ``function:
module:function``, behind ``--allow-code``)
    The model first transforms its input.  The forward pass always runs the real transform
    (so every number and trust check is about the real model); the backward pass follows
    ``bpda``: ``identity`` (BPDA, the default of a non-differentiable transform), ``exact`` (the
    transform's own gradient, the default of a differentiable one), or ``python:module:function``,
    a smooth approximation whose gradient stands in for the transform's.

The wrappers keep the evaluator's guarantees: :func:`..attacks.batching.fixed_batch` puts its
micro-batches inside :class:`Randomized` (so every call of the network has a fixed shape), and a
randomized model's output for a batch depends on that batch alone, never on calls made before.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..registry import (RANDOM_TRANSFORMS, DefenseError, allowed_code, check_randomized,  # noqa: F401
                        check_transform, module_allowed)
from .errors import ModelError


def _import(target: str, allow_code: Any, where: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    if not module_allowed(module, allowed_code() if allow_code is None else allow_code):
        raise DefenseError(f"{where}: runs code from module '{module}'; not imported. If you trust it, re-run with "
                           f"--allow-code, or add '{module}' to the suite's allow_code list")
    return getattr(importlib.import_module(module), name)


# --------------------------------------------------------------------------- transforms
def quantize(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Bit-depth reduction: ``2**bits`` grey levels (``bits=1``: a threshold at 0.5)."""
    levels = 2 ** int(bits) - 1
    return torch.round(x.clamp(0, 1) * levels) / levels


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Real JPEG compression (PIL, baseline, 4:2:0 for colour) at ``quality``, image by image."""
    import numpy as np
    from PIL import Image

    out = torch.empty_like(x)
    arr = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    for i, im in enumerate(arr):
        mode = "L" if im.shape[0] == 1 else "RGB"
        pil = Image.fromarray(im[0] if mode == "L" else im.transpose(1, 2, 0), mode=mode)
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=int(quality))
        back = torch.from_numpy(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert(mode), dtype=np.float32) / 255)
        out[i] = back[None] if mode == "L" else back.permute(2, 0, 1)
    return out.to(x.dtype)


def median(x: torch.Tensor, size: int) -> torch.Tensor:
    """Median filter over ``size`` x ``size`` windows (edges reflected), channel by channel."""
    r = size // 2
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (r, r, r, r), mode="reflect")
    win = padded.unfold(2, size, 1).unfold(3, size, 1)  # (N, C, H, W, size, size)
    return win.reshape(n, c, h, w, size * size).median(dim=-1).values


def gaussian_noise(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Noise injection: ``x + sigma * N(0, 1)`` from the global generator (:class:`Randomized` seeds it)."""
    return x + float(sigma) * torch.randn_like(x)


def transform_fn(decl: Mapping[str, Any], allow_code: Any = None, where: str = "input_transform"
                 ) -> Callable[[torch.Tensor], torch.Tensor]:
    kind = decl["kind"]
    if kind == "quantize":
        return lambda x: quantize(x, decl["bits"])
    if kind == "jpeg":
        return lambda x: jpeg(x, decl["quality"])
    if kind == "median":
        return lambda x: median(x, decl["size"])
    if kind == "gaussian-noise":
        return lambda x: gaussian_noise(x, decl["sigma"])
    return _import(decl["function"], allow_code, f"{where}.function")


class Transformed(nn.Module):
    """``model(transform(x))``: the forward pass runs the real transform; the backward pass is
    the transform's own (``exact``), the identity's (``identity``: BPDA) or a smooth
    approximation's (straight-through: the value is the transform's, the gradient the
    approximation's)."""

    def __init__(self, model: nn.Module, transform: Callable[[torch.Tensor], torch.Tensor], bpda: str = "identity",
                 approx: Callable[[torch.Tensor], torch.Tensor] | None = None, name: str = "transform"):
        super().__init__()
        self.inner, self.transform, self.bpda, self.approx, self.name = model, transform, bpda, approx, name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bpda == "exact" or not torch.is_grad_enabled() or not x.requires_grad:
            return self.inner(self.transform(x))
        with torch.no_grad():
            t = self.transform(x)
        smooth = x if self.approx is None else self.approx(x)
        return self.inner(smooth + (t - smooth).detach())


# --------------------------------------------------------------------------- randomized models
def _content_seed(seed: int, x: torch.Tensor, purpose: str) -> int:
    """A seed from ``x``'s pixels as an 8-bit image (and ``seed``, ``purpose``).  Not from their
    float bits: an adversarial image computed on another CPU differs from ours in the last bits
    (its gradients did), and hashing those bits would give it wholly other draws, so a verdict near
    the boundary would flip at random (measured: 129 of 600 examples of an L2 cell of the
    noise-injection model under another CPU code path).  Images equal at 8 bits share their draws."""
    h = hashlib.blake2b(f"{seed}/{purpose}/{tuple(x.shape)}".encode(), digest_size=8)
    h.update((x.detach().clamp(0, 1) * 255).round().to(torch.uint8).contiguous().cpu().numpy().tobytes())
    return int.from_bytes(h.digest(), "little") >> 1


@contextlib.contextmanager
def seeded(seed: int, device: torch.device):
    """The global generators (CPU, and ``device``'s when a GPU) seeded with ``seed`` inside, and
    restored after: what a randomized model draws inside depends on ``seed`` alone."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if devices:
            torch.manual_seed(seed)
        else:  # the CPU generator alone: torch.manual_seed also queues a seed for every lazy backend
            torch.default_generator.manual_seed(seed)  # (CUDA, XPU, MTIA), formatting the stack each time
        yield


class Randomized(nn.Module):
    """A model with a random output, declared ``randomized: {eot, draws, seed}`` (module docstring).

    - With gradients enabled (an attack step), a call is **one draw** from the global generator,
      as the model itself would give (pyautoattack's ``rand`` version averages 20 such calls).
    - :meth:`eot_logits` gives ``eot`` draws of every row (our attacks' expectation over
      transformation), each row's seeded by its own pixels.
    - Without gradients, a call is a **query** (what an attack's own checks and Square see): per
      row, the log of the mean softmax of ``draws`` draws seeded by its pixels.
    - :meth:`decision_logits` is the **judgement** (:func:`judge`: every stored outcome, the trust
      checks' verdicts): per example, ``draws`` draws seeded by its own pixels and voted.  Its seeds
      are not the queries': an attack that searches the draws it is shown (Square's thousands of
      queries can find an image whose own draws happen to err) does not carry that luck into the
      verdict, which draws afresh.
    """

    stays_outermost = True  # attacks.batching.fixed_batch puts its micro-batches inside (:meth:`with_inner`)

    def __init__(self, model: nn.Module, eot: int = 20, draws: int = 5, seed: int = 0):
        super().__init__()
        self.inner, self.eot, self.draws, self.seed = model, int(eot), int(draws), int(seed)

    def with_inner(self, inner: nn.Module) -> "Randomized":
        """The same declaration around another network (e.g. the micro-batched one)."""
        return Randomized(inner, self.eot, self.draws, self.seed).train(self.training)

    def _draws(self, x: torch.Tensor, k: int, purpose: str) -> torch.Tensor:
        """``(k, N, classes)`` logits: ``k`` draws of every row of ``x``, one call per row seeded by
        that row's own pixels, so a row's draws never depend on the others (an image that differs in
        its last bits on another CPU re-draws its own noise, not its whole batch's)."""
        return torch.stack(self._rows(x, k, purpose), 1)

    def _rows(self, x: torch.Tensor, k: int, purpose: str) -> list[torch.Tensor]:
        out = []
        for row in x:
            with seeded(_content_seed(self.seed, row, purpose), x.device):
                out.append(self.inner(row.unsqueeze(0).expand(k, *row.shape)))  # (k, classes)
        return out

    def _per_row(self, x: torch.Tensor, k: int, purpose: str, reduce) -> torch.Tensor:
        """``reduce`` of each row's ``(k, classes)`` draws, computed row by row (a reduction over a
        larger tensor could round a row differently)."""
        return torch.stack([reduce(z) for z in self._rows(x, k, purpose)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self.inner(x)
        if len(x) == 0:
            return self.inner(x)
        return self._per_row(x, self.draws, "query", lambda z: z.softmax(1).mean(0).clamp_min(1e-30).log())

    def eot_logits(self, x: torch.Tensor, eot: int | None = None) -> torch.Tensor:
        """``(eot, N, classes)`` logits: ``eot`` draws of each row, differentiable in ``x``."""
        return self._draws(x, self.eot if eot is None else int(eot), "eot")

    @torch.no_grad()
    def decision_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Scores whose argmax is the decision rule's class: votes out of ``draws``, plus the mean
        softmax probability (below 1, so it only breaks ties)."""
        if len(x) == 0:
            return self.inner(x)

        def vote(z: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.one_hot(z.argmax(1), z.shape[1]).sum(0).to(z.dtype) + z.softmax(1).mean(0)

        return self._per_row(x, self.draws, "judge", vote)


@torch.no_grad()
def judge(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Scores whose argmax is the model's verdict on ``x``: its logits, or for a randomized model
    the majority of its draws (:meth:`Randomized.decision_logits`)."""
    r = randomization(model)
    return r.decision_logits(x) if r is not None else model(x)


def _wrapper(model: nn.Module, cls: type) -> Any:
    """The first ``cls`` among ``model`` and the modules it wraps (through ``.inner``)."""
    for _ in range(8):
        if isinstance(model, cls):
            return model
        model = getattr(model, "inner", None)
        if not isinstance(model, nn.Module):
            return None
    return None


def randomization(model: nn.Module) -> Randomized | None:
    """The :class:`Randomized` wrapper of ``model`` (outermost, or under the evaluator's wrappers)."""
    return _wrapper(model, Randomized)


def transformation(model: nn.Module) -> Transformed | None:
    """The :class:`Transformed` wrapper of ``model``, if it declares an input transform."""
    return _wrapper(model, Transformed)


def eot_samples(model: nn.Module) -> int:
    """How many samples an EOT attack averages on ``model``: 1 for a deterministic model."""
    r = randomization(model)
    return r.eot if r is not None else 1


def defend(model: nn.Module, *, randomized: Mapping[str, Any] | None = None,
           input_transform: Mapping[str, Any] | None = None, allow_code: Any = None,
           where: str = "model") -> nn.Module:
    """``model`` with its declared defenses: ``Randomized(Transformed(model))`` as declared.
    ``randomized``/``input_transform`` fall back to the model's ``shiftbench_randomized`` and
    ``shiftbench_input_transform`` attributes (how a user's own module declares them)."""
    if randomized is None:
        randomized = getattr(model, "shiftbench_randomized", None)
    if input_transform is None:
        input_transform = getattr(model, "shiftbench_input_transform", None)
    if input_transform:
        t = check_transform(input_transform, f"{where}: input_transform")
        if t["kind"] in RANDOM_TRANSFORMS and not randomized:
            raise DefenseError(f"{where}: input_transform {t['kind']} draws random numbers: declare "
                               f"randomized: {{eot: 20, draws: 5}} too, so attacks and decisions account for it")
        fn = transform_fn(t, allow_code, f"{where}: input_transform")
        approx = None
        if isinstance(t["bpda"], str) and t["bpda"].startswith("python:"):
            approx = _import(t["bpda"][len("python:"):], allow_code, f"{where}: input_transform.bpda")
        model = Transformed(model, fn, "exact" if t["bpda"] == "exact" else "identity", approx, t["kind"])
    if randomized:
        r = check_randomized(randomized, f"{where}: randomized")
        model = Randomized(model, r["eot"], r["draws"], r["seed"])
    return model


def record(model: nn.Module, attack: str) -> dict[str, Any] | None:
    """What a result stores about the defenses its numbers account for (None: no declared defense)."""
    from ..attacks import eot_attack

    r, t = randomization(model), transformation(model)
    if r is None and t is None:
        return None
    out: dict[str, Any] = {}
    if r is not None:
        out.update({"randomized": True, "eot": r.eot if eot_attack(attack) else 1, "draws": r.draws,
                    "rule": "majority of draws (ties: mean softmax)"})
    if t is not None:
        out.update({"transform": t.name, "bpda": "smooth approximation" if t.approx is not None else
                    ("none (exact gradient)" if t.bpda == "exact" else "identity")})
    return out


def changes_between_calls(model: nn.Module, x: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-5) -> float:
    """The largest difference of two identical no-gradient calls beyond float noise (0: none)."""
    with torch.no_grad():
        a, b = model(x), model(x)
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape != b.shape:
        return 0.0  # not logits: the output checks name the problem
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()) or torch.allclose(a, b, rtol=rtol, atol=atol):
        return 0.0
    return float((a - b).abs().max())


def require_declared(model: nn.Module, x: torch.Tensor, where: str = "the model") -> None:
    """Refuse a model whose output changes between identical calls unless it is declared randomized."""
    if randomization(model) is not None or len(x) == 0:
        return
    diff = changes_between_calls(model, x[:8])
    if diff:
        raise ModelError(
            f"{where}: two identical calls in eval mode gave different outputs (max difference {diff:.3g}): a "
            "randomized model cannot be evaluated as if it were deterministic. Declare it: in its entry "
            "'randomized: {eot: 20, draws: 5}', in Python benchmark.evaluate(..., randomized={'eot': 20, 'draws': 5}) "
            "or an attribute shiftbench_randomized on the module, on the command line regress --randomized eot=20,draws=5 "
            "(see docs/defenses.md)")
