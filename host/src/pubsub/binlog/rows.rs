//! A row image of the binlog as a JSON object: the table's column names (the binlog carries
//! only positions, unless the server logs full row metadata) and each value as JSON.
//!
//! Values: integers and floats as numbers (unsigned columns read as unsigned), `DECIMAL` as a
//! string (exact), text as a string, binary data that is not UTF-8 as base64, dates and times
//! as `YYYY-MM-DD HH:MM:SS[.ffffff]` / `[-]HH:MM:SS[.ffffff]`, MySQL's binary `JSON` as JSON
//! (MariaDB's `JSON` is text, so a string), `NULL` as `null`.

use base64::Engine as _;
use mysql_async::Value;
use mysql_async::binlog::row::BinlogRow;
use mysql_async::binlog::value::BinlogValue;
use serde_json::{Map, Value as Json};

/// One column of a table, as `information_schema.COLUMNS` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// `DATA_TYPE` (`int`, `varchar`, `decimal`, ...).
    pub data_type: String,
    /// Whether `COLUMN_TYPE` says `unsigned`.
    pub unsigned: bool,
}

/// The row image `row` as a JSON object keyed by the column names of `columns` (by position;
/// a column the list does not know is named `@N`).
pub fn row_json(row: &BinlogRow, columns: &[Column]) -> Map<String, Json> {
    let mut out = Map::new();
    for i in 0..row.len() {
        let column = columns.get(i);
        let name = column.map_or_else(|| format!("@{i}"), |c| c.name.clone());
        let value = match row.as_ref(i) {
            Some(v) => value_json(v, column),
            // A column left out of the image (binlog_row_image = MINIMAL).
            None => continue,
        };
        out.insert(name, value);
    }
    out
}

fn value_json(value: &BinlogValue<'_>, column: Option<&Column>) -> Json {
    match value {
        BinlogValue::Value(v) => plain_json(v, column),
        BinlogValue::Jsonb(j) => match Json::try_from(j.clone()) {
            Ok(json) => json,
            Err(e) => Json::String(format!("<json: {e}>")),
        },
        // MySQL's partial JSON update (binlog_row_value_options = PARTIAL_JSON).
        BinlogValue::JsonDiff(diffs) => Json::String(format!("{diffs:?}")),
    }
}

fn plain_json(value: &Value, column: Option<&Column>) -> Json {
    match value {
        Value::NULL => Json::Null,
        Value::Int(i) => match column.filter(|c| c.unsigned && *i < 0) {
            Some(c) => Json::from(as_unsigned(*i, &c.data_type)),
            None => Json::from(*i),
        },
        Value::UInt(u) => Json::from(*u),
        Value::Float(f) => Json::from(*f as f64),
        Value::Double(d) => Json::from(*d),
        Value::Bytes(b) => match std::str::from_utf8(b) {
            Ok(s) => Json::String(s.to_string()),
            Err(_) => Json::String(base64::engine::general_purpose::STANDARD.encode(b)),
        },
        Value::Date(y, mo, d, h, mi, s, us) => {
            let mut out = format!("{y:04}-{mo:02}-{d:02}");
            if (*h, *mi, *s, *us) != (0, 0, 0, 0) || !is_date_only(column) {
                out.push_str(&format!(" {h:02}:{mi:02}:{s:02}"));
                if *us > 0 {
                    out.push_str(&format!(".{us:06}"));
                }
            }
            Json::String(out)
        }
        Value::Time(neg, days, h, mi, s, us) => {
            let hours = u32::from(*h) + days * 24;
            let sign = if *neg { "-" } else { "" };
            let mut out = format!("{sign}{hours:02}:{mi:02}:{s:02}");
            if *us > 0 {
                out.push_str(&format!(".{us:06}"));
            }
            Json::String(out)
        }
    }
}

fn is_date_only(column: Option<&Column>) -> bool {
    column.is_some_and(|c| c.data_type == "date")
}

/// A negative `Int` read from an unsigned column of type `data_type`, as the unsigned value
/// the column holds (the binlog does not say the column is unsigned, unless the server logs
/// row metadata).
fn as_unsigned(i: i64, data_type: &str) -> u64 {
    match data_type {
        "tinyint" => u64::from(i as u8),
        "smallint" => u64::from(i as u16),
        "mediumint" => (i as u64) & 0xff_ffff,
        "int" | "integer" => u64::from(i as u32),
        _ => i as u64,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn col(name: &str, data_type: &str, unsigned: bool) -> Column {
        Column {
            name: name.into(),
            data_type: data_type.into(),
            unsigned,
        }
    }

    fn row(values: Vec<Value>) -> BinlogRow {
        let columns: Arc<[mysql_async::Column]> = Arc::from(Vec::new());
        BinlogRow::new(
            values
                .into_iter()
                .map(|v| Some(BinlogValue::Value(v)))
                .collect(),
            columns,
        )
    }

    #[test]
    fn values_become_json_with_the_column_names() {
        let columns = [
            col("id", "int", false),
            col("name", "varchar", false),
            col("amount", "decimal", false),
            col("big", "int", true),
            col("blob", "blob", false),
            col("at", "datetime", false),
            col("day", "date", false),
            col("gone", "varchar", false),
        ];
        let r = row(vec![
            Value::Int(7),
            Value::Bytes(b"caf\xc3\xa9".to_vec()),
            Value::Bytes(b"1.50".to_vec()),
            Value::Int(-294_967_296),
            Value::Bytes(vec![0, 255]),
            Value::Date(2026, 12, 6, 1, 2, 3, 456_000),
            Value::Date(2026, 12, 6, 0, 0, 0, 0),
            Value::NULL,
        ]);
        let json = Json::Object(row_json(&r, &columns));
        assert_eq!(
            json,
            serde_json::json!({
                "id": 7, "name": "café", "amount": "1.50", "big": 4_000_000_000u64,
                "blob": "AP8=", "at": "2026-12-06 01:02:03.456000", "day": "2026-12-06",
                "gone": null
            })
        );
    }

    #[test]
    fn unknown_columns_are_named_by_position_and_times_keep_their_sign() {
        let r = row(vec![Value::Time(true, 1, 2, 3, 4, 0), Value::UInt(9)]);
        let json = Json::Object(row_json(&r, &[]));
        assert_eq!(json, serde_json::json!({"@0": "-26:03:04", "@1": 9}));
        assert_eq!(as_unsigned(-1, "tinyint"), 255);
        assert_eq!(as_unsigned(-1, "mediumint"), 0xff_ffff);
        assert_eq!(as_unsigned(-1, "bigint"), u64::MAX);
    }
}
