"""``extension_qualname`` and the combined worker extension classes it names."""

from __future__ import annotations

import pytest
from vllm.utils.import_utils import resolve_obj_by_qualname

from tests.unit import operator_extension
from tests.unit.operator_extension import OperatorExtension
from vllm_poc.worker import extension as worker
from vllm_poc.worker.extension import PoCWorkerExtension, extension_qualname

OURS = "vllm_poc.worker.extension.PoCWorkerExtension"


def test_ours_is_the_qualname_of_the_extension_class():
    assert resolve_obj_by_qualname(OURS) is PoCWorkerExtension


@pytest.mark.parametrize("existing", [None, ""])
def test_no_operator_extension_gives_ours(existing):
    assert extension_qualname(existing) == OURS


def test_ours_stays_ours():
    assert extension_qualname(OURS) == OURS


def test_operator_extension_is_combined_with_ours():
    qualname = extension_qualname(operator_extension.QUALNAME)

    assert qualname not in (OURS, operator_extension.QUALNAME)
    assert qualname.startswith("vllm_poc.worker.")
    combined = resolve_obj_by_qualname(qualname)
    assert isinstance(combined, type)
    assert issubclass(combined, PoCWorkerExtension)
    assert issubclass(combined, OperatorExtension)
    instance = combined()
    assert instance.operator_ping() == "pong"
    assert callable(instance.poc_run)


def test_combined_class_is_resolved_once():
    qualname = extension_qualname(operator_extension.QUALNAME)
    assert resolve_obj_by_qualname(qualname) is resolve_obj_by_qualname(qualname)


@pytest.mark.parametrize("existing", [None, "", OURS, operator_extension.QUALNAME])
def test_applying_twice_is_stable(existing):
    once = extension_qualname(existing)
    assert extension_qualname(once) == once
    assert extension_qualname(extension_qualname(once)) == once


def test_different_operator_extensions_get_different_names():
    other = "tests.unit.operator_extension.Other"
    assert extension_qualname(other) != extension_qualname(operator_extension.QUALNAME)


def test_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError, match="NoSuchThing"):
        _ = worker.NoSuchThing
    assert not hasattr(worker, "NoSuchThing")


def test_malformed_combined_name_raises_attribute_error():
    # A module ``__getattr__`` must raise AttributeError for a name it does not have, or
    # ``hasattr``/``getattr(..., default)`` blow up instead of answering False/default.
    name = "PoCWorkerExtensionWith_not-hex"
    with pytest.raises(AttributeError):
        getattr(worker, name)
    assert getattr(worker, name, None) is None


def test_combined_name_of_a_missing_class_raises_attribute_error():
    qualname = extension_qualname("tests.unit.no_such_module.Extension")
    with pytest.raises(AttributeError):
        resolve_obj_by_qualname(qualname)
    qualname = extension_qualname("tests.unit.operator_extension.NoSuchExtension")
    with pytest.raises(AttributeError):
        resolve_obj_by_qualname(qualname)


def test_combined_class_pickles_by_reference():
    import pickle

    from vllm.utils.import_utils import resolve_obj_by_qualname

    from vllm_poc.worker.extension import extension_qualname

    cls = resolve_obj_by_qualname(
        extension_qualname("tests.unit.operator_extension.OperatorExtension")
    )
    assert pickle.loads(pickle.dumps(cls)) is cls
