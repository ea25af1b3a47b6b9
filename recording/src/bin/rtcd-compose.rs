//! `rtcd-compose DIR`: a recording's directory to one playable MP4 (H.264 + AAC), with
//! ffmpeg. The work is in `rtcd_recording::compose`; `docs/recording.md` describes the
//! layout and the sync.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use rtcd_recording::compose::{self, Graph, Options};

/// Turns a recording's directory (manifest.json and one file per track) into one MP4: video
/// tracks in a grid (a screen share or the active speaker large), audio mixed, in sync.
#[derive(Debug, Parser)]
#[command(name = "rtcd-compose", version)]
struct Cli {
    /// The recording's directory (holding manifest.json).
    dir: PathBuf,
    /// The output file [default: DIR/composite.mp4].
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// The picture's width in pixels (even).
    #[arg(long, default_value_t = 1280)]
    width: u32,
    /// The picture's height in pixels (even).
    #[arg(long, default_value_t = 720)]
    height: u32,
    /// Frames per second of the output.
    #[arg(long, default_value_t = 25)]
    fps: u32,
    /// The ffmpeg program.
    #[arg(long, default_value = "ffmpeg")]
    ffmpeg: PathBuf,
    /// Print the ffmpeg command (with its filter graph) instead of running it.
    #[arg(long)]
    dry_run: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let options = Options {
        output: cli.output,
        width: cli.width,
        height: cli.height,
        fps: cli.fps,
        ffmpeg: cli.ffmpeg,
    };
    let started = Instant::now();
    let result = if cli.dry_run {
        compose::prepare(&cli.dir, &options).map(|prepared| {
            let args = prepared
                .plan
                .args(&cli.dir, &prepared.output, Graph::Inline);
            let words: Vec<String> = std::iter::once(options.ffmpeg.as_os_str())
                .chain(args.iter().map(|a| a.as_os_str()))
                .map(|a| shell_quote(&a.to_string_lossy()))
                .collect();
            // A closed pipe (`| head`) is not an error of ours.
            let _ = writeln!(std::io::stdout(), "{}", words.join(" "));
        })
    } else {
        compose::run(&cli.dir, &options).map(|prepared| {
            eprintln!(
                "rtcd-compose: wrote {} ({} ms of media, {} segments) in {:.1} s",
                prepared.output.display(),
                prepared.plan.duration_ms,
                prepared.plan.segments.len(),
                started.elapsed().as_secs_f64()
            );
        })
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rtcd-compose: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Quotes a word for a POSIX shell when it needs it (for `--dry-run`'s output only).
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:+=,".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}
