"""The outputs each head puts in an artifact's graph, in order, with what they mean: the one place a
new head family plugs into deployment.

DeployModule (what the graph computes), the ONNX export, the manifest's `outputs` and `heads`, and
every reader after them (verify, bench, infer, the Triton repository) take the output names from
here. One head and several heads are the same case: a graph with several heads only names each
output "<task>.<output>" (`output_name`), so `multi` decides naming and nothing else.

Adding a head family (for example Mask2Former's segmentor):
  1. reference/models/: the head module, built by `build_head` (task_model.py); TaskModel.forward
     and MultiTaskModel.forward (multi_task.py) return its outputs under the names listed here;
  2. here: its outputs in forward order, each with its doc, under its task, or under
     (task, head_type) when a head type of an existing task outputs other tensors than the task's
     default head (`head_outputs` looks that key up first).
"""

from __future__ import annotations

# task (or (task, head_type)) -> {output: doc}, in TaskModel.forward order
HEAD_OUTPUTS: dict[str | tuple[str, str], dict[str, str]] = {
    "features": {
        "cls": "normalised class token [B, D]",
        "storage": "normalised storage (register) tokens [B, 4, D]",
        "patch": "normalised patch tokens [B, h*w, D], row-major over the patch grid",
    },
    "seg": {"logits": "class scores at patch resolution [B, C, h, w] (upsample bilinearly, align_corners=False)"},
    "depth": {"depth": "depth in metres at patch resolution [B, 1, h, w]"},
    "cls": {"logits": "class scores [B, C]"},
    # the Mask2Former segmentor (dinov3_deploy/export/m2f_model.py, reference/models/m2f_segmentor.py)
    ("seg", "m2f"): {
        "class_logits": "class logits per query [B, Q, C+1] (the last class is 'no object')",
        "mask_logits": "mask logits per query at stride 4 [B, Q, H/4, W/4]",
        "scores": "semantic scores at the input resolution [B, C, H, W]: softmax(class)[..., :-1] x "
                  "sigmoid(mask logits upsampled bilinearly, align_corners=False)",
    },
}
# outputs an export option adds after a head's own (--seg-output, --feature-layers)
ADDED_OUTPUTS: dict[tuple[str, str], str] = {
    ("seg", "probs"): "softmax over classes of the bilinearly upsampled logits (M2F: of the scores) [B, C, H, W]",
    ("seg", "labels"): "argmax class per pixel of the upsampled logits (M2F: of the scores) [B, H, W] int32",
    ("features", "patch_block"): "normalised patch tokens of that block [B, h*w, D] (final norm applied)",
}
# where an output's spatial grid sits, in input pixels per cell (absent: no spatial grid or the patch size)
OUTPUT_STRIDES: dict[tuple[str, str], int] = {("seg", "mask_logits"): 4, ("seg", "scores"): 1, ("seg", "probs"): 1,
                                             ("seg", "labels"): 1}
# backbone families without an output of the task's head (ConvNeXt has no storage tokens)
ABSENT = {("features", "convnext"): ("storage",)}


def head_outputs(task: str, head_type: str | None = None) -> dict[str, str]:
    """{output: doc} of a head: its head type's entry when it has one, else its task's."""
    return HEAD_OUTPUTS.get((task, head_type)) or HEAD_OUTPUTS[task]


def output_names(task: str, family: str, seg_output: str = "logits", head_type: str | None = None) -> list[str]:
    """One head's graph outputs, in order (without the multi-head prefix)."""
    names = [n for n in head_outputs(task, head_type) if n not in ABSENT.get((task, family), ())]
    if task == "seg" and seg_output != "logits":
        names.append(seg_output)
    return names


def output_name(task: str, name: str, multi: bool) -> str:
    """The graph's name of `task`'s output `name`: "seg.logits" in a multi-head graph, else "logits"."""
    return f"{task}.{name}" if multi else name


def graph_output_names(tasks: list[str], family: str, seg_output: str = "logits",
                       head_types: dict[str, str] | None = None) -> list[str]:
    """Every head's outputs, heads in `tasks` order; named per `output_name`."""
    multi = len(tasks) > 1
    return [output_name(t, n, multi) for t in tasks
            for n in output_names(t, family, seg_output, (head_types or {}).get(t))]


def output_doc(name: str, task: str, head_type: str | None = None) -> str:
    """What the graph output `name` of `task` holds ("" when unknown); multi-head names carry their task."""
    if "." in name:  # a multi-head graph: "<task>.<output>"
        task, name = name.split(".", 1)
    name = name.rstrip("0123456789")  # patch_block3 -> patch_block
    if task not in HEAD_OUTPUTS:
        return ""
    return head_outputs(task, head_type).get(name) or ADDED_OUTPUTS.get((task, name), "")


def output_stride(name: str, task: str, head_type: str | None = None) -> int | None:
    """Input pixels per cell of an output's spatial grid (None: not recorded, e.g. patch-resolution logits)."""
    if "." in name:
        task, name = name.split(".", 1)
    if task == "seg" and head_type == "m2f" and name in ("class_logits",):
        return None
    return OUTPUT_STRIDES.get((task, name))
