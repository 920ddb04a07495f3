"""Sampling several answers per prompt with one prefill: a wrapper around a causal LM.

``generate(num_return_sequences=n)`` copies every prompt n times *before* the forward pass, so a
16-sample SLiCK protocol pays 16 prefills of a few-shot prompt that is much longer than its answer.
:class:`SharedPrefillModel` encodes each prompt once (all tokens but the last, with the position ids
``generate`` would use), repeats its KV cache n times (``Cache.batch_repeat_interleave``) and lets
``generate`` continue from the copies. The logits and the random stream are those of the plain
call, so the answers are identical (tests compare both on four architectures). Models whose cache
cannot be repeated fall back to the plain call, with a warning.

Example::

    answers = generate_answers(SharedPrefillModel(model), tok, prompts, sample_settings)
"""

from __future__ import annotations

import copy
import logging
from typing import Any

__all__ = ["SharedPrefillModel", "prefill_cache"]

logger = logging.getLogger(__name__)


def prefill_cache(model: Any, input_ids: Any, attention_mask: Any) -> Any:
    """The KV cache of all prompt tokens but the last, with the position ids ``generate`` uses.

    ``generate(input_ids, attention_mask, past_key_values=cache)`` then encodes only the last
    prompt token before decoding, exactly as if it had encoded the whole prompt itself.

    Args:
        model: a Hugging Face causal LM.
        input_ids: ``(batch, length)`` left-padded prompt ids, ``length >= 2``.
        attention_mask: the matching mask.

    Returns:
        The model's ``Cache`` of the first ``length - 1`` positions.
    """
    positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    inputs = {
        "input_ids": input_ids[:, :-1],
        "attention_mask": attention_mask[:, :-1],
        "position_ids": positions[:, :-1],
        "use_cache": True,
    }
    try:
        out = model(**inputs, logits_to_keep=1)
    except TypeError:  # a model without logits_to_keep
        out = model(**inputs)
    return out.past_key_values


class SharedPrefillModel:
    """A causal LM whose ``generate(num_return_sequences=n)`` encodes each prompt once.

    Everything but :meth:`generate` is the wrapped model's (attributes are delegated), so it can be
    passed to :func:`~factkeep.probing.generation.generate_answers` in place of the model.

    Args:
        model: a Hugging Face causal LM with a ``Cache`` (``batch_repeat_interleave``).
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self._fallback = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def generate(self, input_ids: Any, attention_mask: Any, generation_config: Any) -> Any:
        """``model.generate``, but with ``num_return_sequences = n > 1`` prompts are encoded once.

        Returns:
            The sequences, ``(batch * n, prompt + new)`` in ``num_return_sequences`` order.
        """
        n = generation_config.num_return_sequences or 1
        if n == 1 or input_ids.shape[1] < 2 or self._fallback:
            return self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=generation_config,
            )
        try:
            cache = prefill_cache(self.model, input_ids, attention_mask)
            cache.batch_repeat_interleave(n)
        except (AttributeError, TypeError, NotImplementedError) as exc:
            logger.warning("shared prefill unavailable for this model (%s); not sharing", exc)
            self._fallback = True
            return self.generate(input_ids, attention_mask, generation_config)
        config = copy.deepcopy(generation_config)
        config.num_return_sequences = 1
        return self.model.generate(
            input_ids=input_ids.repeat_interleave(n, dim=0),
            attention_mask=attention_mask.repeat_interleave(n, dim=0),
            past_key_values=cache,
            generation_config=config,
        )
