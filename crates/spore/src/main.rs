//! The `spore` command.

use clap::Parser;
use spore::cli::{Cli, Command, DhtCommand};
use spore::commands;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let default = if matches!(cli.command, Command::Node(_) | Command::Share(_)) {
        "info"
    } else {
        "warn"
    };
    let filter = match EnvFilter::try_new(cli.log.as_deref().unwrap_or(default)) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: invalid --log filter: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Id { json } => commands::id(cli.data_dir, json),
            Command::Node(args) => commands::node(cli.data_dir, args).await,
            Command::Peers { json } => commands::peers(cli.data_dir, json).await,
            Command::Status { json } => commands::status(cli.data_dir, json).await,
            Command::Ping(args) => commands::ping(args).await,
            Command::Dht { command } => match command {
                DhtCommand::Put { name, value, json } => {
                    commands::dht_put(cli.data_dir, name, value, json).await
                }
                DhtCommand::Get { key, json } => commands::dht_get(cli.data_dir, key, json).await,
            },
            Command::FindPeer { peer, json } => commands::find_peer(cli.data_dir, peer, json).await,
            Command::Pub(args) => commands::publish(cli.data_dir, args).await,
            Command::Sub(args) => commands::subscribe(cli.data_dir, args).await,
            Command::Trust { command } => commands::trust(cli.data_dir, command).await,
            Command::Search(args) => commands::search(cli.data_dir, args).await,
            Command::Share(args) => spore::share::share(cli.data_dir, args).await,
            Command::Get(args) => spore::share::get(cli.data_dir, args).await,
            Command::Blobs { command } => spore::share::blobs(cli.data_dir, command),
            Command::Doc { command } => spore::docs::run(cli.data_dir, command).await,
            Command::Demo(args) => spore::demo::run(args).await,
            Command::Sim(args) => spore::sim::run(args),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
