"""Generated documents keep the sections other tools wrote into them."""

from service.evaluation.sections import carry_sections, replace_section


def test_a_rewritten_document_carries_the_other_tools_section_and_a_tool_replaces_only_its_own():
    doc = replace_section("# Training\n\ntable v1\n", "bench.training", "## Speed\n\n71 tokens/s")
    assert doc.endswith("<!-- bench.training -->\n## Speed\n\n71 tokens/s\n<!-- /bench.training -->\n")
    rewritten = carry_sections(doc, "# Training\n\ntable v2\n")
    assert rewritten.startswith("# Training\n\ntable v2\n") and "71 tokens/s" in rewritten
    again = replace_section(rewritten, "bench.training", "## Speed\n\n111 tokens/s")
    assert "71 tokens/s" not in again and again.count("<!-- bench.training -->") == 1 and "table v2" in again
    assert carry_sections(again, again) == again
