"""`MoelightLM`: lm-evaluation-harness's `LM` interface on a moelight model.

Registered with lm-eval as model `moelight` when this module is imported (lm-eval 0.4.13 has no
plugin discovery: `moelight eval` and `moelight-lm-eval` import it before lm-eval runs).

Scoring follows lm-eval's Hugging Face model: a continuation is scored after its context,
left-truncated to the model's window (`context_length`: `model.max_position_embeddings`, else
`data.seq_len`, unless `max_length` is given);
an empty context is replaced by the tokenizer's EOS, the document separator the model was trained
with. Requests are sorted by length (longest first) and scored in right-padded batches: the
model is causal and routes each token on its own, so padding after a sequence changes nothing
before it.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.instance import Instance
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import model_registry
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from moelight.errors import MoelightError
from moelight.eval.model import EvalModel, load_eval_model
from moelight.recipe import Recipe

log = logging.getLogger(__name__)
MODEL_NAME = "moelight"
DEFAULT_BATCH_SIZE = 16
DEFAULT_MAX_GEN_TOKS = 256


def _int_arg(name: str, value: Any, default: int) -> int:
    if value in (None, "", "auto"):
        return default
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise MoelightError(f"{name}={value!r}: expected a positive integer") from None
    if out < 1:
        raise MoelightError(f"{name}={value!r}: expected a positive integer")
    return out


def context_length(recipe: Recipe) -> int:
    """The window a model is scored in: the model's own context length (`model.max_position_embeddings`,
    which `convert import` copies from the HF config, as lm-eval's HF model reads it), else the
    length a moelight-trained model's rotary positions were trained on (`data.seq_len`)."""
    return recipe.model.max_position_embeddings or recipe.data.seq_len


class MoelightLM(TemplateLM):
    """lm-eval model args: checkpoint=PATH [recipe=PATH] [device=auto|cpu|cuda] [dtype=auto|float32|bfloat16]
    [batch_size=N] [max_length=N]; or a loaded `EvalModel` as `model=`."""

    def __init__(
        self,
        checkpoint: str | None = None,
        recipe: str | None = None,
        model: EvalModel | None = None,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int | str | None = None,
        max_batch_size: int | None = None,  # lm-eval passes it; batches here are fixed-size
        max_length: int | str | None = None,
        **unknown: Any,
    ):
        super().__init__()
        if unknown:
            raise MoelightError(
                f"unknown moelight model args: {', '.join(sorted(unknown))} "
                "(allowed: checkpoint, recipe, device, dtype, batch_size, max_length)"
            )
        if model is None:
            if not checkpoint:
                raise MoelightError("the moelight model needs checkpoint=PATH")
            if device and device.startswith("cuda") and not torch.cuda.is_available():
                # lm-eval's CLI asks for cuda:0 unless told otherwise; without a GPU the CPU is meant.
                log.warning("device %s requested but CUDA is not available: running on the CPU", device)
                device = "cpu"
            model = load_eval_model(checkpoint, recipe, device=device, dtype=dtype)
        self.loaded = model
        self.batch_size = _int_arg("batch_size", batch_size, DEFAULT_BATCH_SIZE)
        self.max_length = _int_arg("max_length", max_length, context_length(model.recipe))

    # ---- what TemplateLM needs -----------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.loaded.tokenizer.eos_id

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    @property
    def tokenizer_name(self) -> str:
        return self.loaded.tokenizer.name

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return [int(t) for t in self.loaded.tokenizer.encode(string)]

    def tok_decode(self, tokens: list[int]) -> str:
        return self.loaded.tokenizer.decode(tokens)

    # ---- the model ----------------------------------------------------------------------

    @torch.inference_mode()
    def _log_probs(self, rows: list[list[int]], keep: list[int]) -> list[torch.Tensor]:
        """Log-softmax (fp32) of the next-token distribution at the last `keep[i]` positions of row i
        (only those: with a large vocabulary the full [B, S, V] in fp32 would not fit)."""
        width = max(len(r) for r in rows)
        batch = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            batch[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        logits = self.loaded.model(batch.to(self.device))
        return [
            F.log_softmax(logits[i, len(r) - k : len(r)].float(), -1).cpu()
            for i, (r, k) in enumerate(zip(rows, keep))
        ]

    def _score(self, context: list[int], continuation: list[int]) -> list[int]:
        """The model input for one request: context + continuation minus its last token, left-truncated."""
        return (context + continuation)[-(self.max_length + 1) :][:-1]

    def _loglikelihood_tokens(
        self,
        requests: list[tuple[tuple[str, str], list[int], list[int]]],
        disable_tqdm: bool = False,
        **kwargs: Any,
    ) -> list[tuple[float, bool]]:
        for _, context, cont in requests:
            if not cont:
                raise MoelightError(f"empty continuation to score after tokens {context[-8:]}")
            if len(cont) > self.max_length:
                raise MoelightError(
                    f"a continuation of {len(cont)} tokens is longer than the model's window "
                    f"({self.max_length}); pass a larger max_length"
                )
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc="moelight loglikelihood", disable=disable_tqdm)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            rows = [self._score(requests[i][1], requests[i][2]) for i in chunk]
            conts = [requests[i][2] for i in chunk]
            for i, cont, scored in zip(chunk, conts, self._log_probs(rows, [len(c) for c in conts])):
                target = torch.tensor(cont, dtype=torch.long)
                picked = scored.gather(-1, target[:, None]).squeeze(-1)
                greedy = bool((scored.argmax(-1) == target).all())
                out[i] = (float(picked.sum()), greedy)
                if requests[i][0] is not None:  # rolling windows are cached per document
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], out[i])
            bar.update(len(chunk))
        bar.close()
        return out  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        """Whole-document log-likelihood in disjoint windows of `max_length` tokens (lm-eval's scheme)."""
        windows: list[tuple[int, tuple[None, list[int], list[int]]]] = []
        for doc, req in enumerate(requests):
            (text,) = req.args
            for pair in get_rolling_token_windows(
                token_list=self.tok_encode(text),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            ):
                context, cont = make_disjoint_window(pair)
                windows.append((doc, (None, context, cont)))
        scores = self._loglikelihood_tokens([w for _, w in windows], disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for (doc, _), (logprob, _) in zip(windows, scores):
            totals[doc] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Greedy decoding until a stop string, EOS or `max_gen_toks` new tokens."""
        out: list[str | None] = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i].args[0]))
        bar = tqdm(total=len(requests), desc="moelight generate_until", disable=disable_tqdm)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            texts = self._generate([requests[i].args for i in chunk])
            for i, text in zip(chunk, texts):
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
            bar.update(len(chunk))
        bar.close()
        return out  # type: ignore[return-value]

    def _generate(self, args: list[tuple[str, dict[str, Any]]]) -> list[str]:
        stops: list[list[str]] = []
        budgets: list[int] = []
        rows: list[list[int]] = []
        for context, gen_kwargs in args:
            kwargs = dict(gen_kwargs or {})
            if kwargs.get("do_sample") or float(kwargs.get("temperature", 0.0) or 0.0) > 0:
                raise MoelightError(
                    "the moelight model decodes greedily only (do_sample: false, temperature: 0)"
                )
            until = kwargs.get("until") or []
            stops.append([until] if isinstance(until, str) else list(until))
            budgets.append(_int_arg("max_gen_toks", kwargs.get("max_gen_toks"), DEFAULT_MAX_GEN_TOKS))
            rows.append(self.tok_encode(context) or [self.prefix_token_id])
        generated: list[list[int]] = [[] for _ in args]
        active = list(range(len(args)))
        while active:
            logps = self._log_probs(
                [(rows[i] + generated[i])[-self.max_length :] for i in active], [1] * len(active)
            )
            still = []
            for i, logp in zip(active, logps):
                token = int(logp[-1].argmax())
                if token == self.eot_token_id:
                    continue
                generated[i].append(token)
                text = self.tok_decode(generated[i])
                if len(generated[i]) < budgets[i] and not any(s and s in text for s in stops[i]):
                    still.append(i)
            active = still
        results = []
        for i in range(len(args)):
            text = self.tok_decode(generated[i])
            for stop in stops[i]:
                if stop:
                    text = text.split(stop)[0]
            results.append(text)
        return results


if MODEL_NAME not in model_registry:
    model_registry.register(MODEL_NAME, target=MoelightLM)
