//! Plain tables for lists (`kiln images`).

use comfy_table::presets::NOTHING;
use comfy_table::{ContentArrangement, Table as Comfy};

pub struct Table {
    inner: Comfy,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        let mut inner = Comfy::new();
        inner.load_style(NOTHING).set_content_arrangement(ContentArrangement::Disabled).set_header(header.to_vec());
        Self { inner }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.inner.add_row(cells);
    }

    pub fn render(&self) -> String {
        // comfy-table pads each cell with one space on both sides; trim the outer ones.
        self.inner
            .lines()
            .map(|l| l.trim_end().strip_prefix(' ').unwrap_or(&l).to_owned())
            .collect::<Vec<_>>()
            .join("\n")
    }
}
