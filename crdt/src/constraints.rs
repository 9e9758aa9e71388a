//! Where a service may run: constraints over node labels (`"zone == eu-1"`,
//! `"role in (edge, core)"`, `"disk != hdd"`, `"tier not in (test)"`), parsed from the
//! strings the spec keeps, and the placement mode (`replicated`, or `global`: one replica
//! on every eligible node). A node without the label fails `==` and `in` and passes `!=`
//! and `not in`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::workload::WorkloadError;

/// Label names and values: at most this many bytes.
pub const LABEL_BYTES_MAX: usize = 63;
/// Labels one node carries at most.
pub const LABELS_PER_NODE_MAX: usize = 64;

/// How many replicas a service runs.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `replicas` of them, placed by rendezvous hashing with room.
    #[default]
    Replicated,
    /// One on every live node that matches the constraints (and has room).
    Global,
}

impl Mode {
    pub fn is_replicated(&self) -> bool {
        *self == Mode::Replicated
    }
}

/// One parsed constraint.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Constraint {
    pub label: String,
    pub operator: Operator,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    Equal(String),
    NotEqual(String),
    In(Vec<String>),
    NotIn(Vec<String>),
}

impl Constraint {
    /// Whether a node with `labels` satisfies it.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.label);
        match &self.operator {
            Operator::Equal(wanted) => value == Some(wanted),
            Operator::NotEqual(refused) => value != Some(refused),
            Operator::In(allowed) => value.is_some_and(|value| allowed.contains(value)),
            Operator::NotIn(refused) => value.is_none_or(|value| !refused.contains(value)),
        }
    }
}

/// The constraint as a spec writes it (`zone == eu-1`, `role in (edge, core)`).
impl std::fmt::Display for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let label = &self.label;
        match &self.operator {
            Operator::Equal(value) => write!(f, "{label} == {value}"),
            Operator::NotEqual(value) => write!(f, "{label} != {value}"),
            Operator::In(values) => write!(f, "{label} in ({})", values.join(", ")),
            Operator::NotIn(values) => write!(f, "{label} not in ({})", values.join(", ")),
        }
    }
}

fn refuse(input: &str, reason: impl Into<String>) -> WorkloadError {
    WorkloadError {
        input: input.to_owned(),
        reason: reason.into(),
    }
}

/// Why a label name, a label value or a node's labels are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("{text:?} is not 1..={LABEL_BYTES_MAX} characters of [A-Za-z0-9_.-]")]
    Malformed { text: String },
    #[error("more than {LABELS_PER_NODE_MAX} labels")]
    TooMany,
    #[error("label name {0}")]
    Name(Box<LabelError>),
    #[error("label {name}: value {source}")]
    Value {
        name: String,
        source: Box<LabelError>,
    },
}

/// Checks a label name or value: 1..=63 characters of `[A-Za-z0-9_.-]`.
pub fn check_label(text: &str) -> Result<(), LabelError> {
    if text.is_empty()
        || text.len() > LABEL_BYTES_MAX
        || !text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(LabelError::Malformed {
            text: text.to_owned(),
        });
    }
    Ok(())
}

/// Checks a node's labels.
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), LabelError> {
    if labels.len() > LABELS_PER_NODE_MAX {
        return Err(LabelError::TooMany);
    }
    for (name, value) in labels {
        check_label(name).map_err(|reason| LabelError::Name(Box::new(reason)))?;
        check_label(value).map_err(|reason| LabelError::Value {
            name: name.clone(),
            source: Box::new(reason),
        })?;
    }
    Ok(())
}

impl std::str::FromStr for Constraint {
    type Err = WorkloadError;
    fn from_str(input: &str) -> Result<Self, WorkloadError> {
        let words: Vec<&str> = input.split_whitespace().collect();
        let (label, operator, rest) = match words.as_slice() {
            [label, "not", "in", rest @ ..] => (*label, "not in", rest.join(" ")),
            [label, operator, rest @ ..] => (*label, *operator, rest.join(" ")),
            _ => {
                return Err(refuse(
                    input,
                    "is not LABEL == VALUE, LABEL != VALUE, LABEL in (A, B) or LABEL not in (A, B)",
                ));
            }
        };
        check_label(label).map_err(|reason| refuse(input, format!("label {reason}")))?;
        let single = |rest: &str| -> Result<String, WorkloadError> {
            check_label(rest).map_err(|reason| refuse(input, format!("value {reason}")))?;
            Ok(rest.to_owned())
        };
        let list = |rest: &str| -> Result<Vec<String>, WorkloadError> {
            let inner = rest
                .strip_prefix('(')
                .and_then(|rest| rest.strip_suffix(')'))
                .ok_or_else(|| refuse(input, "a list must be written (A, B, ...)"))?;
            let values: Vec<String> = inner
                .split(',')
                .map(|value| value.trim().to_owned())
                .collect();
            for value in &values {
                check_label(value).map_err(|reason| refuse(input, format!("value {reason}")))?;
            }
            Ok(values)
        };
        let operator = match operator {
            "==" => Operator::Equal(single(&rest)?),
            "!=" => Operator::NotEqual(single(&rest)?),
            "in" => Operator::In(list(&rest)?),
            "not in" => Operator::NotIn(list(&rest)?),
            other => {
                return Err(refuse(
                    input,
                    format!("operator {other:?} is not ==, !=, in or not in"),
                ));
            }
        };
        Ok(Constraint {
            label: label.to_owned(),
            operator,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn constraints_parse_and_match() {
        let node = labels(&[("zone", "eu-1"), ("role", "edge")]);
        let check = |text: &str| text.parse::<Constraint>().unwrap().matches(&node);
        assert!(check("zone == eu-1"));
        assert!(!check("zone == eu-2"));
        assert!(check("zone != eu-2"));
        assert!(check("role in (edge, core)"));
        assert!(!check("role in (core)"));
        assert!(check("role not in (core, test)"));
        assert!(!check("disk == ssd"), "a missing label fails ==");
        assert!(check("disk != hdd"), "and passes !=");
        assert!(!check("disk in (ssd)"));
        assert!(check("disk not in (hdd)"));
        for bad in [
            "zone",
            "zone ~= eu",
            "zone == ",
            "zone == a b",
            "role in edge",
            "role in (edge,)",
            "zo/ne == x",
            "zone >= 1",
        ] {
            assert!(bad.parse::<Constraint>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn labels_are_checked() {
        assert!(check_labels(&labels(&[("zone", "eu-1")])).is_ok());
        assert!(check_labels(&labels(&[("zone", "")])).is_err());
        assert!(check_labels(&labels(&[("a b", "x")])).is_err());
    }
}
