//! Heads that read the encoder's other layers (contract 0.2.0) through a real pipeline: the
//! host encodes the layers the pipeline's heads ask for and hands each head its own, and a
//! layer the encoder lacks fails the load naming the head.

use serde_json::Value;

use super::headstream;
use super::host_budgets::hostile_pipeline;

/// A pipeline with a `probe` head (the hostile head's `layers` mode) asking for `pooled` and
/// `tokens` layers, beside keyword flags (which asks for none).
fn pipeline(dir: &std::path::Path, pooled: &str, tokens: &str) -> std::path::PathBuf {
    let config = format!("mode = \"layers\"\npooled = {pooled}\ntokens = {tokens}");
    hostile_pipeline(dir, "probe", &config, "")
}

#[test]
fn a_head_gets_the_layers_it_asks_for_from_the_real_encoder()
-> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let file = pipeline(dir.path(), "[6, 0, 3]", "[4, 6]");
    let run = headstream(
        &["run", "--pipeline", &file.to_string_lossy()],
        b"{\"id\":\"a\",\"text\":\"call me asap\"}\n{\"id\":\"b\",\"text\":\"a longer text than the first one\"}\n",
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let records: Vec<Value> = String::from_utf8_lossy(&run.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(records.len(), 2, "{records:?}");
    for record in &records {
        let probe = &record["results"]["probe"];
        let tokens = probe["token_count"].as_u64().unwrap_or(0);
        assert!(tokens >= 5, "{record}");
        // Three pooled layers of 384, in the order asked; two token layers of tokens x 384.
        let sizes = |key: &str| -> Vec<u64> {
            probe[key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p[0].as_u64())
                .collect()
        };
        assert_eq!(sizes("pooled"), [384, 384, 384], "{record}");
        assert_eq!(sizes("tokens"), [tokens * 384, tokens * 384], "{record}");
        // Layers differ: the embedding layer's output is not the last layer's.
        assert_ne!(probe["pooled"][0][1], probe["pooled"][1][1], "{record}");
        // The head beside it is served as before.
        assert!(record["results"]["flags"].is_object(), "{record}");
    }
    assert_eq!(records[0]["results"]["flags"]["flags"][0], "urgent");
    Ok(())
}

#[test]
fn a_layer_the_encoder_lacks_fails_the_load_naming_the_head()
-> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let file = pipeline(dir.path(), "[7]", "[]");
    let run = headstream(&["run", "--pipeline", &file.to_string_lossy()], b"");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{stderr}");
    assert!(
        stderr
            .contains("head probe: layer 7 asked for: the encoder has layers 0 (embeddings) to 6"),
        "{stderr}"
    );
    Ok(())
}
