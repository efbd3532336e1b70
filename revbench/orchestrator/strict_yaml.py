"""YAML as revbench reads suite files and `--set` values: PyYAML's safe loader, but no mapping may hold a key twice.

The safe loader keeps the last of two equal keys without a word, so a suite that gives `steps` twice would run
with whichever came last. YAML itself says a mapping's keys are unique (strict loaders such as ruamel.yaml's
refuse duplicates); so does this one, naming the key and the lines of both. A merge (`<<: *base`) is no
duplicate: the mapping's own keys override what it merges, as YAML intends.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Any

import yaml
from yaml.constructor import ConstructorError

MERGE_TAG = "tag:yaml.org,2002:merge"


class StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader refusing a mapping that holds the same key twice."""


def _refuse_duplicate_keys(loader: StrictLoader, node: yaml.MappingNode) -> None:
    first: dict[Hashable, yaml.Node] = {}
    for key_node, _ in node.value:
        if key_node.tag == MERGE_TAG:
            continue
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, Hashable):
            continue  # the safe constructor refuses an unhashable key itself
        seen = first.setdefault(key, key_node)
        if seen is not key_node:
            raise ConstructorError("while constructing a mapping", node.start_mark,
                                   f"duplicate key {key!r} (first at line {seen.start_mark.line + 1})",
                                   key_node.start_mark)


def _construct_mapping(loader: StrictLoader, node: yaml.MappingNode) -> Iterator[dict[Any, Any]]:
    # A generator, as PyYAML's own: the mapping exists before its values, so an alias may refer back to it.
    data: dict[Any, Any] = {}
    yield data
    _refuse_duplicate_keys(loader, node)
    data.update(loader.construct_mapping(node))


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load(text: str) -> Any:
    """One YAML document, as yaml.safe_load reads it, with duplicate keys refused (a yaml.YAMLError)."""
    return yaml.load(text, Loader=StrictLoader)  # a SafeLoader: no arbitrary objects
