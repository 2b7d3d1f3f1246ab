"""U-Tuning's attention tuners and the combined method (docs/methods.md#utuning): prefix, prompt (VPT-deep), and
`utuning` (prefix + prompt on attention, parallel adapter on the MLP, as the released U-Tuning model). None of them
merges: the extra keys, values and the adapter's GELU stay in the exported graph.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from adapterbank.methods.adapter import adapter_ops, attach_adapters, check_positive_int
from adapterbank.methods.attention_tokens import ExtendedAttention
from adapterbank.methods.base import Method, MethodConfig
from adapterbank.methods.placements import attention_targets
from adapterbank.routing import TaskRouter


def attach_attention_tokens(model: nn.Module, router: TaskRouter, method: str, prefix: int, prompt: int) -> None:
    for attn_path, norm_path in attention_targets(model, method):
        module = ExtendedAttention(
            model.get_submodule(attn_path), model.get_submodule(norm_path), router, prefix, prompt
        )
        model.set_submodule(attn_path, module)


def token_ops(prefix: int, prompt: int) -> list[str]:
    ops = []
    if prefix:
        ops.append(f"prefix: {prefix} learned keys/values concatenated in every self-attention")
    if prompt:
        ops.append(f"prompt: keys/values of {prompt} learned tokens in every self-attention (VPT-deep)")
    return ops


@dataclasses.dataclass
class PrefixConfig(MethodConfig):
    length: int = 10

    def validate(self) -> None:
        check_positive_int("prefix length", self.length)


@dataclasses.dataclass
class PromptConfig(MethodConfig):
    length: int = 10  # VPT's most frequent prompt length (not verified per task; docs/methods.md#prompt)

    def validate(self) -> None:
        check_positive_int("prompt length", self.length)


@dataclasses.dataclass
class UTuningConfig(MethodConfig):
    """The release's configuration.json is not public (docs/methods.md#utuning); 8/8/8 gives 0.378M trainable values
    on ViT-B/16 without the head, next to the 0.36M the V-PETL benchmark reports."""

    prefix_length: int = 8
    prompt_length: int = 8
    adapter_dim: int = 8
    adapter_scale: float = 0.1

    def validate(self) -> None:
        check_positive_int("prefix_length", self.prefix_length, allow_zero=True)
        check_positive_int("prompt_length", self.prompt_length, allow_zero=True)
        check_positive_int("adapter_dim", self.adapter_dim)


class AttentionTokens(Method):
    """Prefix and prompt: extra keys and values in every self-attention, `lengths` = (prefix, prompt)."""

    mergeable = False

    def lengths(self, config: MethodConfig) -> tuple[int, int]:
        raise NotImplementedError

    def attach(self, model: nn.Module, config: MethodConfig, router: TaskRouter) -> None:
        attach_attention_tokens(model, router, self.name, *self.lengths(config))

    def extra_ops(self, config: MethodConfig) -> list[str]:
        return token_ops(*self.lengths(config))


class Prefix(AttentionTokens):
    name = "prefix"
    summary = "learned keys and values in every self-attention (prefix tuning, U-Tuning's MHA tuner)"
    config_type = PrefixConfig

    def lengths(self, config: PrefixConfig) -> tuple[int, int]:
        return config.length, 0


class Prompt(AttentionTokens):
    name = "prompt"
    summary = "learned prompt tokens at every block (VPT-deep), computed as extra keys and values"
    config_type = PromptConfig

    def lengths(self, config: PromptConfig) -> tuple[int, int]:
        return 0, config.length


class UTuning(Method):
    name = "utuning"
    summary = "prefix + prompt on attention and a parallel adapter on the MLP (the U-Tuning release)"
    config_type = UTuningConfig
    mergeable = False

    def attach(self, model: nn.Module, config: UTuningConfig, router: TaskRouter) -> None:
        if config.prefix_length or config.prompt_length:
            attach_attention_tokens(model, router, self.name, config.prefix_length, config.prompt_length)
        attach_adapters(model, router, config.adapter_dim, config.adapter_scale)

    def extra_ops(self, config: UTuningConfig) -> list[str]:
        return [*token_ops(config.prefix_length, config.prompt_length), adapter_ops(config.adapter_dim)]
