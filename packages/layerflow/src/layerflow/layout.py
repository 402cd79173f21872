"""The data-driven layer layout: which layers a model generates, how alpha is carried, which clips a task conditions on.

LayerFlow puts every layer of a video in one token sequence: one prompt per layer, then one clip per
layer (plus an alpha clip per transparent layer in the official RGBA variant), concatenated along
the latent frame axis. Nothing else in this package hard-codes where the foreground, background or
composite sit: the pipeline, the transformer's text/position handling, the attention segments and
the writers all read positions from a :class:`TaskLayout`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

Role = Literal["foreground", "background", "composite"]
AlphaRepresentation = Literal["rgb", "alpha_clip", "latent_offset"]
ClipContent = Literal["color", "alpha"]
Task = Literal["generate", "foreground_to_background", "background_to_foreground", "decompose"]

ROLES: tuple[Role, ...] = get_args(Role)
ALPHA_REPRESENTATIONS: tuple[AlphaRepresentation, ...] = get_args(AlphaRepresentation)
TASKS: tuple[Task, ...] = get_args(Task)


@dataclass(frozen=True)
class LayerSpec:
    """One layer of the video. Foregrounds are transparent (RGB + alpha); the other roles are opaque."""

    name: str
    role: Role

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ValueError(
                f"layer name must be a non-empty identifier (letters, digits, _), got {self.name!r}"
            )
        if self.role not in ROLES:
            raise ValueError(f"layer {self.name!r}: role must be one of {ROLES}, got {self.role!r}")

    @property
    def transparent(self) -> bool:
        return self.role == "foreground"


@dataclass(frozen=True)
class TaskSpec:
    """What a task conditions on and which layers lose their prompt (a condition described by nothing)."""

    condition_roles: tuple[Role, ...]
    unprompted_roles: tuple[Role, ...] = ()


#: The four LayerFlow tasks. Decomposition conditions on the composite and, as in the official
#: code, describes only the foreground(s) and the background.
TASK_SPECS: Mapping[Task, TaskSpec] = {
    "generate": TaskSpec(condition_roles=()),
    "foreground_to_background": TaskSpec(condition_roles=("foreground",)),
    "background_to_foreground": TaskSpec(condition_roles=("background",)),
    "decompose": TaskSpec(condition_roles=("composite",), unprompted_roles=("composite",)),
}


@dataclass(frozen=True)
class ClipSpec:
    """One clip of the concatenated latent video: a layer's colour video or its alpha video."""

    layer: str
    content: ClipContent


@dataclass(frozen=True)
class ResolvedLayer:
    """A layer as one task sees it."""

    name: str
    role: Role
    has_alpha: bool
    has_prompt: bool
    prompt_index: int | None
    is_condition: bool
    clip_indices: tuple[int, ...]


@dataclass(frozen=True)
class LayerLayout:
    """The ordered layers of a model and how their alpha is represented.

    Args:
        layers: layer specs in token order (official: foreground, background, composite).
        alpha: ``"rgb"``: no alpha at all (official RGB variants); ``"alpha_clip"``: the alpha matte
            is an extra 3-channel clip right after its layer's colour clip (official RGBA variants);
            ``"latent_offset"``: the alpha rides inside the foreground latent through a transparent
            VAE (LayerDiffuse style), so there is no alpha clip.
    """

    layers: tuple[LayerSpec, ...]
    alpha: AlphaRepresentation = "alpha_clip"
    _by_name: dict[str, LayerSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("a layout needs at least one layer")
        if self.alpha not in ALPHA_REPRESENTATIONS:
            raise ValueError(f"alpha must be one of {ALPHA_REPRESENTATIONS}, got {self.alpha!r}")
        names = [layer.name for layer in self.layers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"layer names must be unique, repeated: {duplicates}")
        object.__setattr__(self, "_by_name", {layer.name: layer for layer in self.layers})

    # -- constructors --------------------------------------------------------------------------
    @classmethod
    def official(cls, alpha: AlphaRepresentation = "alpha_clip") -> LayerLayout:
        """The LayerFlow layout: foreground, background, composite."""
        return cls.with_foregrounds(1, alpha=alpha)

    @classmethod
    def with_foregrounds(cls, count: int, alpha: AlphaRepresentation = "alpha_clip") -> LayerLayout:
        """``count`` foregrounds (``foreground`` or ``foreground_0 .. foreground_{count-1}``), background, composite."""
        if count < 1:
            raise ValueError(f"need at least one foreground, got {count}")
        names = ["foreground"] if count == 1 else [f"foreground_{i}" for i in range(count)]
        fgs = [LayerSpec(name, "foreground") for name in names]
        return cls((*fgs, LayerSpec("background", "background"), LayerSpec("composite", "composite")), alpha)

    # -- serialisation (stored in the pipeline config) -----------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "layers": [{"name": s.name, "role": s.role} for s in self.layers]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerLayout:
        try:
            layers = tuple(LayerSpec(str(item["name"]), item["role"]) for item in data["layers"])
            return cls(layers, data.get("alpha", "alpha_clip"))
        except (KeyError, TypeError) as error:
            raise ValueError(f"malformed layer layout {dict(data)!r}: {error}") from error

    # -- queries --------------------------------------------------------------------------------
    def layer(self, name: str) -> LayerSpec:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no layer named {name!r}; this layout has {list(self._by_name)}") from None

    @property
    def clips(self) -> tuple[ClipSpec, ...]:
        """Clips in latent-frame order: each layer's colour clip, then (``alpha_clip``) its alpha clip."""
        clips: list[ClipSpec] = []
        for spec in self.layers:
            clips.append(ClipSpec(spec.name, "color"))
            if spec.transparent and self.alpha == "alpha_clip":
                clips.append(ClipSpec(spec.name, "alpha"))
        return tuple(clips)

    def for_task(self, task: str) -> TaskLayout:
        if task not in TASK_SPECS:
            raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
        return TaskLayout(self, task)  # type: ignore[arg-type]


@dataclass(frozen=True)
class TaskLayout:
    """A :class:`LayerLayout` resolved for one task: prompts, condition clips, token segments."""

    layout: LayerLayout
    task: Task

    @property
    def spec(self) -> TaskSpec:
        return TASK_SPECS[self.task]

    @property
    def clips(self) -> tuple[ClipSpec, ...]:
        return self.layout.clips

    @property
    def layers(self) -> tuple[ResolvedLayer, ...]:
        resolved: list[ResolvedLayer] = []
        prompt_index = 0
        clips = self.clips
        for spec in self.layout.layers:
            has_prompt = spec.role not in self.spec.unprompted_roles
            resolved.append(
                ResolvedLayer(
                    name=spec.name,
                    role=spec.role,
                    has_alpha=spec.transparent and self.layout.alpha != "rgb",
                    has_prompt=has_prompt,
                    prompt_index=prompt_index if has_prompt else None,
                    is_condition=spec.role in self.spec.condition_roles,
                    clip_indices=tuple(i for i, clip in enumerate(clips) if clip.layer == spec.name),
                )
            )
            prompt_index += int(has_prompt)
        return tuple(resolved)

    @property
    def prompt_layers(self) -> tuple[ResolvedLayer, ...]:
        """Layers that carry a prompt, in prompt-index order."""
        return tuple(layer for layer in self.layers if layer.has_prompt)

    @property
    def condition_layers(self) -> tuple[ResolvedLayer, ...]:
        return tuple(layer for layer in self.layers if layer.is_condition)

    @property
    def condition_clips(self) -> tuple[int, ...]:
        return tuple(sorted(i for layer in self.condition_layers for i in layer.clip_indices))

    @property
    def generated_clips(self) -> tuple[int, ...]:
        condition = set(self.condition_clips)
        return tuple(i for i in range(len(self.clips)) if i not in condition)

    @property
    def num_prompts(self) -> int:
        return len(self.prompt_layers)

    def segment_lengths(self, tokens_per_prompt: int, tokens_per_clip: int) -> list[int]:
        """Token counts of the joint sequence: one segment per prompt, then one per clip."""
        return [tokens_per_prompt] * self.num_prompts + [tokens_per_clip] * len(self.clips)

    def attention_table(self, isolate_conditions: bool) -> list[list[bool]] | None:
        """Which segment (rows: queries) may attend which, over ``segment_lengths``' segments.

        ``None`` is full joint attention (official). With ``isolate_conditions`` the clean condition
        clips attend only to the text and to the condition clips, so they are encoded independently
        of the noisy clips (every other segment still attends everything).
        """
        if not isolate_conditions or not self.condition_clips:
            return None
        prompts, condition = self.num_prompts, set(self.condition_clips)
        size = prompts + len(self.clips)
        table = [[True] * size for _ in range(size)]
        for clip in condition:
            table[prompts + clip] = [j < prompts or (j - prompts) in condition for j in range(size)]
        return table

    def resolve_prompts(self, prompts: Mapping[str, str] | Sequence[str], what: str = "prompts") -> list[str]:
        """Per-layer prompts (by layer name, or a list in prompt order) -> a list in prompt order.

        Missing prompts raise naming the layer; prompts for layers that take none in this task
        (the composite in ``decompose``) or for unknown layers raise too, never silently dropped.
        """
        expected = [layer.name for layer in self.prompt_layers]
        if isinstance(prompts, str):
            raise TypeError(f"{what} must be a mapping layer name -> text or a list, got a single str")
        if isinstance(prompts, Mapping):
            unknown = sorted(set(prompts) - set(expected))
            if unknown:
                raise ValueError(
                    f"{what} given for {unknown}, but task {self.task!r} takes prompts only for {expected}"
                )
            missing = [name for name in expected if not prompts.get(name)]
            if missing:
                raise ValueError(
                    f"{what} missing for layer(s) {missing} (task {self.task!r} needs {expected})"
                )
            texts = [prompts[name] for name in expected]
        else:
            texts = list(prompts)
            if len(texts) != len(expected):
                raise ValueError(
                    f"task {self.task!r} needs {len(expected)} {what} for {expected}, got {len(texts)}"
                )
        for name, text in zip(expected, texts, strict=True):
            if not isinstance(text, str):
                raise TypeError(f"{what} for layer {name!r} must be a str, got {type(text).__name__}")
        return texts
