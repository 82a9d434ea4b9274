//! `spore doc …`: documents through the running node's API.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use crate::api::{ApiClient, DocCreated, DocView, EditRequest, JoinRequest, WriterRequest};
use crate::cli::DocCommand;
use crate::commands::open_data_dir;

/// Runs a `spore doc` command.
pub async fn run(data_dir: Option<PathBuf>, command: DocCommand) -> Result<()> {
    let dir = open_data_dir(data_dir)?;
    let client = ApiClient::from_data_dir(&dir)?;
    match command {
        DocCommand::New { json } => {
            let created: DocCreated = client.post("/v1/docs", &()).await?;
            if json {
                println!("{}", serde_json::to_string(&created)?);
            } else {
                println!("document {}", created.doc);
                println!("ticket: {}", created.ticket);
                println!("others join with: spore doc join {}", created.ticket);
            }
        }
        DocCommand::Join { ticket } => {
            let joined: DocCreated = client
                .post("/v1/docs/join", &JoinRequest { ticket })
                .await?;
            println!("{}", joined.doc);
        }
        DocCommand::Set {
            doc,
            key,
            value,
            add,
            incr,
        } => {
            let edit = if incr {
                let by: i64 = value
                    .parse()
                    .with_context(|| format!("--incr needs an integer, not {value:?}"))?;
                EditRequest::Increment { key, by }
            } else if add {
                EditRequest::Add {
                    key,
                    value: serde_json::Value::String(value),
                }
            } else {
                EditRequest::Set {
                    key,
                    value: serde_json::Value::String(value),
                }
            };
            let _: DocView = client
                .post(&format!("/v1/docs/{doc}/edits"), &vec![edit])
                .await?;
        }
        DocCommand::Get { doc, key, json } => {
            let view: DocView = client.get(&format!("/v1/docs/{doc}")).await?;
            match key {
                Some(key) => {
                    let found: Vec<(&String, &String)> = view
                        .entries
                        .iter()
                        .filter(|(k, _)| k.split_once(':').is_some_and(|(_, name)| name == key))
                        .collect();
                    if found.is_empty() {
                        bail!("document {doc} has no key {key:?}");
                    }
                    for (k, v) in found {
                        if json {
                            println!("{}", serde_json::json!({ "key": k, "value": v }));
                        } else {
                            println!("{v}");
                        }
                    }
                }
                None if json => println!("{}", serde_json::to_string_pretty(&view)?),
                None => print_view(&view),
            }
        }
        DocCommand::Edit { doc, key } => edit_text(&client, &doc, &key).await?,
        DocCommand::Watch { doc, count } => {
            let mut events = client.events(&format!("/v1/docs/{doc}/events")).await?;
            let mut seen = 0;
            while let Some(event) = events.next().await? {
                if event.event != "state" {
                    continue;
                }
                let view: DocView = serde_json::from_str(&event.data)
                    .context("the node sent a document state that does not parse")?;
                println!("{}", serde_json::to_string(&view.entries)?);
                seen += 1;
                if count.is_some_and(|c| seen >= c) {
                    break;
                }
            }
        }
        DocCommand::Allow { doc, peer } => {
            let view: DocView = client
                .post(&format!("/v1/docs/{doc}/writers"), &WriterRequest { peer })
                .await?;
            println!("{} writers: {}", view.writers.len(), {
                let w: Vec<String> = view.writers.iter().map(|p| p.to_string()).collect();
                w.join(", ")
            });
        }
        DocCommand::Close {
            doc,
            trusted_within,
        } => {
            let closed: crate::api::ClosedDoc = client
                .put_json(
                    &format!("/v1/docs/{doc}/closed"),
                    &crate::api::ClosedDoc {
                        depth: trusted_within,
                    },
                )
                .await?;
            println!(
                "document {doc} now syncs only with peers trusted within {} vouches",
                closed.depth
            );
        }
        DocCommand::Ticket { doc } => {
            let t: serde_json::Value = client.get(&format!("/v1/docs/{doc}/ticket")).await?;
            println!("{}", t["ticket"].as_str().unwrap_or_default());
        }
    }
    Ok(())
}

fn print_view(view: &DocView) {
    let folded = match view.checkpoint {
        0 => String::new(),
        n => format!(", {} in checkpoint {n}", view.changes - view.log as u64),
    };
    println!(
        "document {}  (owner {}, {} writers, {} changes{folded}, {} bytes)",
        view.doc,
        view.owner.short(),
        view.writers.len(),
        view.changes,
        view.bytes,
    );
    for (k, v) in &view.entries {
        println!("  {k} = {v}");
    }
}

/// Opens the text in `$EDITOR` and sends the difference as a deletion and an insertion.
async fn edit_text(client: &ApiClient, doc: &str, key: &str) -> Result<()> {
    let view: DocView = client.get(&format!("/v1/docs/{doc}")).await?;
    let old = view
        .entries
        .get(&format!("Text:{key}"))
        .cloned()
        .unwrap_or_default();
    let file = std::env::temp_dir().join(format!("spore-doc-{}.txt", std::process::id()));
    std::fs::write(&file, &old).with_context(|| format!("cannot write {}", file.display()))?;
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(&file)
        .status()
        .with_context(|| format!("cannot run the editor {editor:?}"))?;
    let new = std::fs::read_to_string(&file);
    let _ = std::fs::remove_file(&file);
    if !status.success() {
        bail!("the editor {editor:?} failed ({status}); the document is unchanged");
    }
    let new = new.context("cannot read the edited text back")?;
    let edits = diff(key, &old, &new);
    if edits.is_empty() {
        eprintln!("no change");
        return Ok(());
    }
    let _: DocView = client
        .post(&format!("/v1/docs/{doc}/edits"), &edits)
        .await?;
    Ok(())
}

/// The edits that turn `old` into `new`: the common prefix and suffix are kept, the middle is
/// deleted and inserted (positions in characters).
fn diff(key: &str, old: &str, new: &str) -> Vec<EditRequest> {
    let a: Vec<char> = old.chars().collect();
    let b: Vec<char> = new.chars().collect();
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let removed = a.len() - prefix - suffix;
    let inserted: String = b[prefix..b.len() - suffix].iter().collect();
    let mut edits = Vec::new();
    if removed > 0 {
        edits.push(EditRequest::Delete {
            key: key.into(),
            pos: prefix,
            len: removed,
        });
    }
    if !inserted.is_empty() {
        edits.push(EditRequest::Insert {
            key: key.into(),
            pos: prefix,
            text: inserted,
        });
    }
    edits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_keep_the_common_ends() {
        assert_eq!(diff("t", "hello", "hello"), vec![]);
        assert_eq!(
            diff("t", "hello world", "hello brave world"),
            vec![EditRequest::Insert {
                key: "t".into(),
                pos: 6,
                text: "brave ".into()
            }]
        );
        assert_eq!(
            diff("t", "aXXb", "aYb"),
            vec![
                EditRequest::Delete {
                    key: "t".into(),
                    pos: 1,
                    len: 2
                },
                EditRequest::Insert {
                    key: "t".into(),
                    pos: 1,
                    text: "Y".into()
                }
            ]
        );
        assert_eq!(
            diff("t", "ééé", "éé"),
            vec![EditRequest::Delete {
                key: "t".into(),
                pos: 2,
                len: 1
            }]
        );
    }
}
