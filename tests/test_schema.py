"""The one schema mechanism (``distill.schema``): field ranges and checks, signatures as schemas, options."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from distill.errors import DistillError
from distill.schema import (
    ValidationIssue,
    at_least,
    between,
    build_dataclass,
    check_options,
    checked,
    positive,
    signature_schema,
)


@dataclass
class Ranged:
    count: int = field(default=1, metadata=positive())
    workers: int = field(default=0, metadata=at_least(0))
    seed: int = field(default=0, metadata=between(0, 2**32 - 1, "must be an integer from 0 to 2**32 - 1"))
    rate: float = field(default=0.5, metadata=positive())
    name: str = field(default="x", metadata=checked(lambda value: value.lower()))


def issue_of(cls: type, data: dict[str, Any]) -> ValidationIssue:
    with pytest.raises(ValidationIssue) as error:
        build_dataclass(cls, data, ("top",))
    return error.value


@pytest.mark.parametrize(
    ("data", "key", "message"),
    [
        ({"count": 0}, "count", "must be positive, got 0"),
        ({"count": -1}, "count", "must be positive, got -1"),
        ({"rate": 0}, "rate", "must be positive, got 0.0"),
        ({"workers": -1}, "workers", "must be 0 or more, got -1"),
        ({"seed": -1}, "seed", "must be an integer from 0 to 2**32 - 1, got -1"),
        ({"seed": 2**32}, "seed", f"must be an integer from 0 to 2**32 - 1, got {2**32}"),
    ],
)
def test_a_value_outside_its_fields_range_names_the_key_and_the_range(data, key, message):
    issue = issue_of(Ranged, data)
    assert issue.path == ("top", key) and issue.message == message


def test_the_range_boundaries_that_are_inside_are_accepted():
    built = build_dataclass(Ranged, {"count": 1, "workers": 0, "seed": 2**32 - 1, "rate": 1e-9}, ())
    assert (built.count, built.workers, built.seed) == (1, 0, 2**32 - 1)
    assert build_dataclass(Ranged, {"seed": 0}, ()).seed == 0


def test_a_field_check_normalises_or_refuses():
    assert build_dataclass(Ranged, {"name": "ABC"}, ()).name == "abc"

    def refuse(value: str) -> str:
        raise ValueError(f"expected no {value!r}")

    @dataclass
    class Refusing:
        name: str = field(default="", metadata=checked(refuse))

    issue = issue_of(Refusing, {"name": "x"})
    assert issue.path == ("top", "name") and issue.message == "expected no 'x'"


def test_post_init_issues_are_placed_under_the_dataclass_key():
    @dataclass
    class Pair:
        low: int = 0
        high: int = 1

        def __post_init__(self) -> None:
            if self.high < self.low:
                raise ValidationIssue(("high",), "must not be below low")

    issue = issue_of(Pair, {"low": 3, "high": 2})
    assert issue.path == ("top", "high") and issue.message == "must not be below low"


# --- signatures as schemas ------------------------------------------------------------------


def annotated(image_size: int, *, depth: int = 2, scale: float = 1.0, names: list[str] | None = None) -> None: ...


def unannotated(image_size, *, depth=2) -> None: ...


def open_builder(num_classes: int = 10, depth=2, *, width: int = 1, **kwargs) -> None: ...


def required(image_size: int, *, depth: int) -> None: ...


def test_signature_schema_reads_annotations_and_defaults():
    schema = signature_schema(annotated, skip=("image_size",))
    assert schema.names() == ["depth", "scale", "names"] and not schema.open
    assert schema.parameters["depth"].annotation is int and schema.parameters["depth"].default == 2
    assert not schema.parameters["scale"].required
    assert signature_schema(required, skip=("image_size",)).parameters["depth"].required


def test_signature_schema_refuses_an_unannotated_option_of_a_closed_builder():
    with pytest.raises(DistillError, match="'depth' needs a type annotation"):
        signature_schema(unannotated, skip=("image_size",))
    assert signature_schema(unannotated, skip=("image_size", "depth")).names() == []


def test_an_open_builder_passes_unannotated_and_undeclared_options_on():
    schema = signature_schema(open_builder, skip=("num_classes",))
    assert schema.open and schema.names() == ["depth", "width"]
    options = check_options({"depth": "deep", "width": 2.0, "anything": 1}, schema, ("o",), "model 'm'")
    assert options == {"depth": "deep", "width": 2, "anything": 1}
    with pytest.raises(ValidationIssue, match="expected int"):
        check_options({"width": "wide"}, schema, ("o",), "model 'm'")


def test_check_options_gives_one_message_for_an_unknown_option():
    schema = signature_schema(annotated, skip=("image_size",))
    with pytest.raises(ValidationIssue) as error:
        check_options({"dept": 3}, schema, ("data", "options"), "dataset 'x'")
    assert error.value.path == ("data", "options", "dept")
    assert error.value.message == (
        "dataset 'x' has no option 'dept'. Did you mean 'depth'? Its options: depth, scale, names. Remove it."
    )
    empty = signature_schema(annotated, skip=("image_size", "depth", "scale", "names"))
    with pytest.raises(ValidationIssue, match="^model 'm' has no option 'a'. It takes no options. A hint. Remove it.$"):
        check_options({"a": 1}, empty, (), "model 'm'", hints={"a": " A hint."})


def test_check_options_checks_types_converts_losslessly_and_wants_required_ones():
    schema = signature_schema(annotated, skip=("image_size",))
    assert check_options({"scale": 2, "names": ["a"]}, schema, (), "view 'v'") == {"scale": 2.0, "names": ["a"]}
    with pytest.raises(ValidationIssue, match=r"expected int, got 'high' \(str\)"):
        check_options({"depth": "high"}, schema, (), "view 'v'")
    with pytest.raises(ValidationIssue, match="required option of view 'v' is missing"):
        check_options({}, signature_schema(required, skip=("image_size",)), (), "view 'v'")
