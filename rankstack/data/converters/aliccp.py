"""Ali-CCP (Alibaba click and conversion prediction, the ESMM data) in the torch-rechub CSV layout → a
multi-task CTR + CVR dataset.

Input: a folder with one CSV per split (`ali_ccp_{train,val,test}*.csv`): `click`, `purchase`, then the
dataset's feature fields named by their Ali-CCP field ids (`101`, `205`, `109_14`, ...) with categorical ids,
and `D`-prefixed dense values (`D109_14`, `D508`, ...). Output columns get the names of the field descriptions
of the Ali-CCP release (field 101 → `user_id`, 205 → `item_id`, ...; the id is in each column's description);
a field the table below does not know keeps its id as `field_<id>` with role context.
"""

from __future__ import annotations

from pathlib import Path

from rankstack.data.converters.common import (
    SPLITS,
    Converter,
    Option,
    find_split_files,
    read_header,
    require_columns,
)
from rankstack.data.converters.tabular import (
    SPLIT_FILE_OPTIONS,
    VOCAB_OPTIONS,
    TabularField,
    TabularFormat,
    categorical_vocab,
    write_tabular,
)
from rankstack.data.schema import ColumnSpec, Schema

NAME = "ali-ccp"
#: Ali-CCP field id → (output name, role), after the release's field descriptions
FIELDS = {
    "101": ("user_id", "user"), "121": ("user_profile", "user"), "122": ("user_group", "user"),
    "124": ("user_gender", "user"), "125": ("user_age", "user"), "126": ("user_consumption_1", "user"),
    "127": ("user_consumption_2", "user"), "128": ("user_occupation", "user"), "129": ("user_geography", "user"),
    "109_14": ("user_category_history", "user"), "110_14": ("user_shop_history", "user"),
    "127_14": ("user_brand_history", "user"), "150_14": ("user_intention_history", "user"),
    "205": ("item_id", "item"), "206": ("item_category", "item"), "207": ("item_shop", "item"),
    "210": ("item_intention", "item"), "216": ("item_brand", "item"),
    "508": ("user_category_cross", "cross"), "509": ("user_shop_cross", "cross"),
    "702": ("user_brand_cross", "cross"), "853": ("user_intention_cross", "cross"),
    "301": ("position", "context"),
}
SPLIT_PATTERNS = {"train": ("*train*.csv",), "valid": ("*val*.csv",), "test": ("*test*.csv",)}


def convert_aliccp(input: Path, out: Path, click_label: str, conversion_label: str, numeric_fill: float | None,
                   hash_buckets: int, min_count: int, train: str, valid: str, test: str, max_rows: int) -> Path:
    """Convert an Ali-CCP folder (train/val/test CSV) into a dataset with labels `click` and `conversion`.

    Options:
        click_label, conversion_label: the CSV label columns (default `click` and `purchase`); both must be 0/1.
        numeric_fill: value of an empty `D*` cell (default: an error).
        hash_buckets: > 0 hashes the categoricals into N buckets (0 = build vocabularies); min_count: train count
            below which a value maps to OOV (default 1).
        train, valid, test: file names in the folder (default: the one matching `*train*.csv`, `*val*.csv`,
            `*test*.csv`).
        max_rows: read at most N rows per file (0 = all).

    Columns: click, conversion (labels; conversion is a purchase, so the CVR task is conversion given click);
    the categorical fields as string ids with the roles user (1xx), item (2xx), cross (5xx-8xx) and context
    (301); the dense `D*` fields as numerics `<name>_value` with the role of their id field. group_key = user_id.
    """
    files = find_split_files(input, {"train": train, "valid": valid, "test": test}, SPLIT_PATTERNS, NAME)
    header = read_header(files["train"], ",")
    require_columns(header, [click_label, conversion_label], files["train"],
                    "Name the label columns with `--option click_label=` and `--option conversion_label=`.")
    vocab = categorical_vocab(hash_buckets, min_count)
    fields = [TabularField(ColumnSpec("click", "numeric", "label"), click_label),
              TabularField(ColumnSpec("conversion", "numeric", "label", description="purchase"), conversion_label)]
    for column in header:
        if column in (click_label, conversion_label):
            continue
        dense = column.startswith("D") and column[1:] in FIELDS
        field_id = column[1:] if dense else column
        name, role = FIELDS.get(field_id, (f"field_{field_id}", "context"))
        description = f"Ali-CCP field {column}"
        if dense:
            spec = ColumnSpec(f"{name}_value", "numeric", role, description=description)
        else:
            spec = ColumnSpec(name, "categorical", role, dtype="string", vocab=vocab, description=description)
        fields.append(TabularField(spec, column))
    group_key = "user_id" if "101" in header else ""
    schema = Schema(name="ali-ccp", columns=[f.spec for f in fields], group_key=group_key,
                    description="Ali-CCP click and conversion (multi-task CTR/CVR)")
    fmt = TabularFormat(fields, numeric_fill=numeric_fill)
    return write_tabular(out, schema, fmt, [(files[s], s) for s in SPLITS], max_rows=max_rows)


CONVERTER = Converter(
    name=NAME,
    description="Ali-CCP CSV folder (click, purchase, field-id columns) → multi-task dataset with labels click and "
                "conversion",
    options=(
        Option("click_label", "click", "CSV column of the click label"),
        Option("conversion_label", "purchase", "CSV column of the conversion label"),
        Option("numeric_fill", None, "value of an empty D* cell (default: an error)", kind="float"),
        *VOCAB_OPTIONS,
        *SPLIT_FILE_OPTIONS,
    ),
    run=convert_aliccp,
)
