//! A client of a running node's HTTP API: lists every space and its ideas.
//!
//! Start a node first (`agora up`), then `cargo run --example api_client -- [DATA_DIR]`.
//! The example reads the API address and token from `<data dir>/api.json`, exactly as the
//! `agora` CLI does; any language with an HTTP client can do the same (see docs/API.md).

use agora_node::config::{default_data_dir, ApiFile, API_FILE};
use serde_json::Value;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .map(Into::into)
        .or_else(|| std::env::var_os("AGORA_DATA_DIR").map(Into::into))
        .or_else(default_data_dir)
        .ok_or_else(|| anyhow::anyhow!("pass the data dir as the first argument"))?;
    let api: ApiFile =
        serde_json::from_slice(&std::fs::read(std::path::Path::new(&dir).join(API_FILE))?)?;
    let base = format!("http://{}/api/v1", api.addr);
    let http = reqwest::Client::new();
    let get = |path: String| {
        let req = http.get(format!("{base}{path}")).bearer_auth(&api.token);
        async move {
            anyhow::Ok(
                req.send()
                    .await?
                    .error_for_status()?
                    .json::<Value>()
                    .await?,
            )
        }
    };
    for space in get("/spaces".into())
        .await?
        .as_array()
        .into_iter()
        .flatten()
    {
        let id = space["id"].as_str().unwrap_or_default();
        println!(
            "space {id} {}",
            space["name"].as_str().unwrap_or("(unnamed)")
        );
        for idea in get(format!("/spaces/{id}/ideas"))
            .await?
            .as_array()
            .into_iter()
            .flatten()
        {
            println!(
                "  {} [{}] {} (+{} -{})",
                idea["id"].as_str().unwrap_or_default(),
                idea["status"].as_str().unwrap_or_default(),
                idea["title"].as_str().unwrap_or_default(),
                idea["votes"]["up"],
                idea["votes"]["down"]
            );
        }
    }
    Ok(())
}
