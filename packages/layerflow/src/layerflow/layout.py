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
from typing import Any, Literal, cast, get_args

Role = Literal["foreground", "background", "composite"]
AlphaRepresentation = Literal["rgb", "alpha_clip", "latent_offset"]
ClipContent = Literal["color", "alpha"]
Task = Literal["generate", "foreground_to_background", "background_to_foreground", "decompose", "animate"]
VaePass = Literal["per_clip", "joint"]

ROLES: tuple[Role, ...] = get_args(Role)
ALPHA_REPRESENTATIONS: tuple[AlphaRepresentation, ...] = get_args(AlphaRepresentation)
#: The four LayerFlow tasks: what a layout runs unless it says otherwise.
TASKS: tuple[Task, ...] = ("generate", "foreground_to_background", "background_to_foreground", "decompose")
#: Tasks whose conditions are first frames: a model runs them natively only when trained for them
#: (listed in its layout's ``tasks``), else training-free on top of their ``TaskSpec.training_free_from``.
FIRST_FRAME_TASKS: tuple[Task, ...] = ("animate",)
ALL_TASKS: tuple[Task, ...] = get_args(Task)
VAE_PASSES: tuple[VaePass, ...] = get_args(VaePass)


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
    """What a task conditions on and which layers lose their prompt (a condition described by nothing).

    ``first_frame_roles``: roles that may be given as their first frame only (the condition is that
    clip's first latent frame); ``training_free_from``: the task a model not trained for this one
    must run for the training-free mode (first-frame latents re-noised to every step's timestep).
    """

    condition_roles: tuple[Role, ...]
    unprompted_roles: tuple[Role, ...] = ()
    first_frame_roles: tuple[Role, ...] = ()
    training_free_from: Task | None = None


#: The four LayerFlow tasks. Decomposition conditions on the composite and, as in the official
#: code, describes only the foreground(s) and the background.
TASK_SPECS: Mapping[Task, TaskSpec] = {
    "generate": TaskSpec(condition_roles=()),
    "foreground_to_background": TaskSpec(condition_roles=("foreground",)),
    "background_to_foreground": TaskSpec(condition_roles=("background",)),
    "decompose": TaskSpec(condition_roles=("composite",), unprompted_roles=("composite",)),
    # Animate: every layer prompted and generated, any of them given as its first frame (a cutout,
    # a plate); at least one. Training-free on a ``generate`` model.
    "animate": TaskSpec(condition_roles=(), first_frame_roles=ROLES, training_free_from="generate"),
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
    first_frame: bool = False


@dataclass(frozen=True)
class LayerLayout:
    """The ordered layers of a model and how their alpha is represented.

    Args:
        layers: layer specs in token order (official: foreground, background, composite).
        alpha: ``"rgb"``: no alpha at all (official RGB variants); ``"alpha_clip"``: the alpha matte
            is an extra 3-channel clip right after its layer's colour clip (official RGBA variants);
            ``"latent_offset"``: the alpha rides inside the foreground latent through a transparent
            VAE (LayerDiffuse style), so there is no alpha clip.
        vae_pass: ``"per_clip"``: every clip is VAE-encoded and decoded on its own; ``"joint"``: the
            clips, concatenated along time in layout order, are ONE causal video for the VAE (one
            encode, one decode over the whole latent sequence), as the official code does.
        duplicate_first_frame: a copy of the first clip's frame 0 is prepended to the video, so the
            first clip has one extra latent (official RGBA fg2bg / bg2fg: 65 frames, 17 latents).
        condition_tail_latents: only this many trailing latent frames of a condition clip are clean
            conditions, the rest of that clip is generated (official RGB decomposition: 2); ``None``:
            the whole clip.
        tasks: the tasks this layout runs (an official checkpoint was trained for one).
        variant: the official variant name this layout was made from (:func:`layerflow.variants.official_variant`).
    """

    layers: tuple[LayerSpec, ...]
    alpha: AlphaRepresentation = "alpha_clip"
    vae_pass: VaePass = "per_clip"
    duplicate_first_frame: bool = False
    condition_tail_latents: int | None = None
    tasks: tuple[Task, ...] = TASKS
    variant: str | None = None
    _by_name: dict[str, LayerSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("a layout needs at least one layer")
        if self.alpha not in ALPHA_REPRESENTATIONS:
            raise ValueError(f"alpha must be one of {ALPHA_REPRESENTATIONS}, got {self.alpha!r}")
        if self.vae_pass not in VAE_PASSES:
            raise ValueError(f"vae_pass must be one of {VAE_PASSES}, got {self.vae_pass!r}")
        if self.vae_pass == "joint" and self.alpha == "latent_offset":
            raise ValueError(
                "the joint VAE pass encodes plain RGB clips; 'latent_offset' needs vae_pass='per_clip'"
            )
        if self.condition_tail_latents is not None and self.condition_tail_latents < 1:
            raise ValueError(
                f"condition_tail_latents must be >= 1 or None, got {self.condition_tail_latents}"
            )
        unknown_tasks = [task for task in self.tasks if task not in ALL_TASKS]
        if not self.tasks or unknown_tasks:
            raise ValueError(f"tasks must be a non-empty subset of {ALL_TASKS}, got {self.tasks}")
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
        """JSON form (``model_index.json``'s ``layout``); fields at their default are left out."""
        data: dict[str, Any] = {
            "alpha": self.alpha,
            "layers": [{"name": s.name, "role": s.role} for s in self.layers],
        }
        for key, default in _OPTIONAL_FIELDS.items():
            value = getattr(self, key)
            if value != default:
                data[key] = list(value) if isinstance(value, tuple) else value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerLayout:
        unknown = sorted(set(data) - {"alpha", "layers", *_OPTIONAL_FIELDS})
        if unknown:
            raise ValueError(f"malformed layer layout {dict(data)!r}: unknown entries {unknown}")
        try:
            layers = tuple(LayerSpec(str(item["name"]), item["role"]) for item in data["layers"])
            options = {key: data.get(key, default) for key, default in _OPTIONAL_FIELDS.items()}
            options["tasks"] = tuple(options["tasks"])
            return cls(layers, data.get("alpha", "alpha_clip"), **options)
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

    def for_task(self, task: str, first_frames: Sequence[str] = ()) -> TaskLayout:
        """``task`` resolved for this layout; ``first_frames``: the layers given as their first frame only."""
        if task not in TASK_SPECS:
            raise ValueError(f"unknown task {task!r}; expected one of {ALL_TASKS}")
        spec = TASK_SPECS[cast(Task, task)]
        if task not in self.tasks and spec.training_free_from not in self.tasks:
            owner = f"official variant {self.variant!r}" if self.variant else "this layout"
            raise ValueError(f"{owner} runs only {list(self.tasks)}, not {task!r}")
        for name in first_frames:
            if name not in self._by_name:
                raise ValueError(
                    f"first frame given for {name!r}: this layout has no such layer {list(self._by_name)}"
                )
            if self._by_name[name].role not in spec.first_frame_roles:
                raise ValueError(
                    f"task {task!r} takes no first frame for layer {name!r} (it conditions on whole clips "
                    f"or generates that layer from nothing); first frames are for {list(FIRST_FRAME_TASKS)}"
                )
        ordered = tuple(spec.name for spec in self.layers if spec.name in set(first_frames))
        return TaskLayout(self, cast(Task, task), ordered)

    def trained_for(self, task: str) -> bool:
        """Whether the model was trained for ``task`` (else a first-frame task runs training-free)."""
        return task in self.tasks


#: Serialised only when they differ from these defaults (older ``model_index.json`` files stay valid).
_OPTIONAL_FIELDS: dict[str, Any] = {
    "vae_pass": "per_clip",
    "duplicate_first_frame": False,
    "condition_tail_latents": None,
    "tasks": TASKS,
    "variant": None,
}


@dataclass(frozen=True)
class TaskLayout:
    """A :class:`LayerLayout` resolved for one task: prompts, condition clips, token segments."""

    layout: LayerLayout
    task: Task
    first_frames: tuple[str, ...] = ()

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
                    first_frame=spec.name in self.first_frames,
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
    def first_frame_layers(self) -> tuple[ResolvedLayer, ...]:
        return tuple(layer for layer in self.layers if layer.first_frame)

    @property
    def first_frame_clips(self) -> tuple[int, ...]:
        """Clips whose first latent frame is a condition (the layers given as first frame only)."""
        return tuple(sorted(i for layer in self.first_frame_layers for i in layer.clip_indices))

    @property
    def given_clips(self) -> tuple[int, ...]:
        """Every clip the codec encodes for this call: whole-clip conditions and first-frame clips."""
        return tuple(sorted({*self.condition_clips, *self.first_frame_clips}))

    @property
    def generated_clips(self) -> tuple[int, ...]:
        condition = set(self.condition_clips)
        return tuple(i for i in range(len(self.clips)) if i not in condition)

    @property
    def num_prompts(self) -> int:
        return len(self.prompt_layers)

    def segment_lengths(self, tokens_per_prompt: int, tokens_per_clip: Sequence[int]) -> list[int]:
        """Token counts of the joint sequence: one segment per prompt, then one per clip."""
        if len(tokens_per_clip) != len(self.clips):
            raise ValueError(f"{len(tokens_per_clip)} clip token counts for {len(self.clips)} clips")
        return [tokens_per_prompt] * self.num_prompts + list(tokens_per_clip)

    def condition_latent_frames(self, clip_latent_frames: Sequence[int]) -> tuple[int, ...]:
        """Indices (into the full latent sequence) of the clean condition latents.

        ``clip_latent_frames`` are the latent frames of each clip in layout order. A condition clip
        counts whole, or only its last ``condition_tail_latents`` frames (official RGB decomposition).
        """
        if len(clip_latent_frames) != len(self.clips):
            raise ValueError(f"{len(clip_latent_frames)} clip lengths for {len(self.clips)} clips")
        starts = [sum(clip_latent_frames[:i]) for i in range(len(clip_latent_frames))]
        tail = self.layout.condition_tail_latents
        frames: list[int] = []
        for clip in self.condition_clips:
            length = clip_latent_frames[clip]
            if tail is not None and tail > length:
                raise ValueError(f"condition_tail_latents={tail}, but clip {clip} has {length} latent frames")
            first = starts[clip] + (0 if tail is None else length - tail)
            frames.extend(range(first, starts[clip] + length))
        return tuple(sorted([*frames, *self.first_frame_latent_frames(clip_latent_frames)]))

    def first_frame_latent_frames(self, clip_latent_frames: Sequence[int]) -> tuple[int, ...]:
        """Indices of the first-frame conditions: the first latent frame of every first-frame clip
        (the causal VAE encodes a clip's opening frames into it alone)."""
        starts = [sum(clip_latent_frames[:i]) for i in range(len(clip_latent_frames))]
        return tuple(starts[clip] for clip in self.first_frame_clips)

    def generated_latent_frames(self, clip_latent_frames: Sequence[int]) -> tuple[int, ...]:
        """Indices of the latents the sampler generates: every latent that is not a condition."""
        condition = set(self.condition_latent_frames(clip_latent_frames))
        return tuple(i for i in range(sum(clip_latent_frames)) if i not in condition)

    def attention_table(self, isolate_conditions: bool) -> list[list[bool]] | None:
        """Which segment (rows: queries) may attend which, over ``segment_lengths``' segments.

        ``None`` is full joint attention (official). With ``isolate_conditions`` the clean condition
        clips attend only to the text and to the condition clips, so they are encoded independently
        of the noisy clips (every other segment still attends everything).
        """
        if not isolate_conditions or not self.given_clips:
            return None
        if self.first_frames:
            raise ValueError(
                f"isolate_conditions works on whole clips; the first frames of {list(self.first_frames)} "
                "condition on part of a clip"
            )
        if self.layout.condition_tail_latents is not None:
            raise ValueError(
                "isolate_conditions works on whole clips; this layout conditions on part of a clip "
                f"(condition_tail_latents={self.layout.condition_tail_latents})"
            )
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
