//! Standalone routes files (`bot-bottle proxy --routes FILE`): the same
//! `egress:` schema as a bottle, checked by the same code.

use std::path::Path;

use crate::diag::{Diagnostics, Severity, Source};
use crate::model::{BottleSpec, DlpMode, Route};
use crate::schema::{self, Checker};
use crate::yaml::{self, YamlPath};

/// A checked egress policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Egress {
    pub routes: Vec<Route>,
    pub dlp: DlpMode,
}

/// Parses a routes file: a mapping with `routes:` and `dlp:`, optionally
/// wrapped in `egress:` so a bottle's section can be reused as is.
pub fn parse_egress(path: &Path, text: &str) -> Result<Egress, Diagnostics> {
    let src = Source { path, full_text: text, yaml: text, line_offset: 0 };
    let root = yaml::parse(text).map_err(|e| {
        Diagnostics(vec![src.diag(
            Severity::Error,
            e.pos,
            format!("invalid YAML: {}", e.message),
            Some("fix the YAML syntax".into()),
            false,
        )])
    })?;
    let mut ck = Checker::new(&src);
    let mut spec = BottleSpec::default();
    let wrapped = root.as_mapping().is_some_and(|m| m.contains_key("egress"));
    let (value, path) =
        if wrapped { (&root["egress"], YamlPath::default().key("egress")) } else { (&root, YamlPath::default()) };
    schema::egress_section(&mut ck, &path, value, &mut spec, wrapped);
    let diags = Diagnostics(ck.diags);
    if diags.has_errors() {
        return Err(diags);
    }
    Ok(Egress { routes: spec.routes.into_values().collect(), dlp: spec.dlp.unwrap_or(DlpMode::Block) })
}
