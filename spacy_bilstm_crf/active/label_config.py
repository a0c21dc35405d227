"""Label Studio labeling configs: the names that tasks, predictions and exports share.

A Label Studio project shows a task's text through a `<Text name="T" value="$FIELD"/>` tag
and lets a person mark regions with `<Labels name="L" toName="T">` and its `<Label
value="..."/>` children. Predictions must carry `from_name="L"` and `to_name="T"`, and the
task's text must be in `data[FIELD]`: with other names Label Studio imports them and shows no
region. Users write their own configs (`ner` / `tweet`, say), so the names come from the
config, never from constants; `default_config` is the one `select` writes when given none.
"""

import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr


class LabelConfigError(ValueError):
    """A labeling config that names no text to label, or cannot be read."""


@dataclass(frozen=True)
class LabelConfig:
    """What a labeling config says about NER regions: the `Labels` tag's name (`from_name`),
    the `Text` tag's name (`to_name`), the task field holding the text, and the labels."""

    from_name: str = "label"
    to_name: str = "text"
    text_field: str = "text"
    labels: tuple[str, ...] = ()

    def differences(self, model_labels: Iterable[str]) -> tuple[list[str], list[str]]:
        """`(labels the model predicts that the config lacks, config labels the model lacks)`."""
        model = list(model_labels)
        return (
            [label for label in model if label not in self.labels],
            [label for label in self.labels if label not in model],
        )


def parse_label_config(xml: str, where: str = "the labeling config") -> LabelConfig:
    """The NER part of a labeling config: its `Labels` tag on a `Text` tag.

    An error names what is missing: no `Text` with a `$field` value, no `Labels` pointing at
    one, or several such pairs (a config for NER has one)."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as error:
        raise LabelConfigError(f"{where} is not valid XML: {error}") from None
    texts = {}
    for tag in root.iter("Text"):
        value = tag.get("value", "")
        if tag.get("name") and value.startswith("$") and len(value) > 1:
            texts[tag.get("name")] = value[1:]
    if not texts:
        raise LabelConfigError(f'{where} has no <Text name="..." value="$field"/> tag.')
    pairs = [tag for tag in root.iter("Labels") if tag.get("toName") in texts]
    if not pairs:
        found = [tag.get("toName") for tag in root.iter("Labels")]
        raise LabelConfigError(
            f"{where} has no <Labels> tag whose toName is one of its Text tags {sorted(texts)}"
            + (f" (its Labels point at {found})" if found else "")
            + "."
        )
    if len(pairs) > 1:
        names = [tag.get("name") for tag in pairs]
        raise LabelConfigError(
            f"{where} has several <Labels> tags on text ({names}); NER needs one."
        )
    labels_tag = pairs[0]
    labels = tuple(
        label.get("value") for label in labels_tag.iter("Label") if label.get("value") is not None
    )
    if not labels_tag.get("name"):
        raise LabelConfigError(f"{where}: the <Labels> tag has no name.")
    to_name = labels_tag.get("toName")
    return LabelConfig(labels_tag.get("name"), to_name, texts[to_name], labels)


def read_label_config(path: str | Path) -> LabelConfig:
    """`parse_label_config` of a file; an error names a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise LabelConfigError(f"The labeling config {str(path)!r} does not exist.")
    return parse_label_config(path.read_text(encoding="utf-8-sig"), str(path))


def default_config(labels: Sequence[str], review_header: bool = False) -> str:
    """A labeling config for `select`'s tasks: `label` regions on the `text` field, selected
    by whole words (a mouse cannot end a region inside a word), and for span tasks a small
    header naming the region to review (sentence and document tasks review all the text)."""
    config = LabelConfig(labels=tuple(labels))
    choices = "\n".join(f"    <Label value={quoteattr(label)}/>" for label in config.labels)
    header = '  <Header value="Review: $review" size="6"/>\n' if review_header else ""
    return (
        "<View>\n"
        f"{header}"
        f"  <Labels name={quoteattr(config.from_name)} toName={quoteattr(config.to_name)}>\n"
        f"{choices}\n  </Labels>\n"
        f"  <Text name={quoteattr(config.to_name)} value={quoteattr('$' + config.text_field)}"
        ' granularity="word"/>\n'
        "</View>\n"
    )
