"""One head is the one-part case of several: the graph's output names come from one table
(dinov3_deploy/head_outputs.py, where a new head family plugs in), and a manifest answers the
same questions (tasks, head, classes, output names) for a single-head and a multi-head artifact."""

from __future__ import annotations

import dataclasses

from manifest_helpers import sample_manifest

from dinov3_deploy import head_outputs as ho
from dinov3_deploy import manifest as mf


def test_output_names_for_one_and_several_heads():
    assert ho.graph_output_names(["seg"], "vit", "labels") == ["logits", "labels"]
    assert ho.graph_output_names(["features"], "convnext") == ["cls", "patch"]  # no storage tokens
    assert ho.graph_output_names(["seg", "depth", "features"], "vit", "probs") == [
        "seg.logits", "seg.probs", "depth.depth", "features.cls", "features.storage", "features.patch"]
    assert ho.output_doc("depth.depth", "multi") == ho.HEAD_OUTPUTS["depth"]["depth"]
    assert ho.output_doc("patch_block3", "features").startswith("normalised patch tokens of that block")


def test_a_head_type_with_its_own_outputs_plugs_in_at_one_key(monkeypatch):
    monkeypatch.setitem(ho.HEAD_OUTPUTS, ("seg", "example"), {"pred_logits": "a", "pred_masks": "b"})
    names = ho.graph_output_names(["seg", "depth"], "vit", "logits", {"seg": "example", "depth": "bins"})
    assert names == ["seg.pred_logits", "seg.pred_masks", "depth.depth"]
    assert ho.output_names("seg", "vit", head_type="linear") == ["logits"]  # the task's default head


def test_manifest_reads_a_single_head_as_the_one_part_case():
    single = sample_manifest("seg")
    head, classes = single.head, single.classes
    assert not single.multi and single.tasks == ["seg"]
    assert single.head_for("seg") is head and single.classes_for("seg") is classes
    assert single.head_for("depth") is None and single.output_name("seg", "logits") == "logits"
    # the same head written as a part of a multi-head artifact answers the same questions
    seg = dataclasses.replace(head, outputs=["seg.logits"], classes=classes)
    depth = dataclasses.replace(head, task="depth", outputs=["depth.depth"], classes=None)
    multi = dataclasses.replace(single, task=mf.MULTI_TASK, **mf.head_fields([seg, depth], multi=True))
    assert multi.multi and multi.tasks == ["seg", "depth"] and multi.head is None
    assert multi.head_for("seg") is seg and multi.classes_for("seg") is classes and multi.classes_for("depth") is None
    assert multi.output_name("seg", "logits") == "seg.logits"
    # and head_fields lays a single head out as schema 2/3 files always had it: head + top-level classes
    fields = mf.head_fields([seg], multi=False)
    assert fields["heads"] == [] and fields["classes"] is classes and fields["head"].classes is None
    assert mf.head_fields([dataclasses.replace(seg, task="features", classes=None)], multi=False)["head"] is None
