"""Study experiments: study A (crosslayer run) and study B (layers, contrast, interpret)."""
