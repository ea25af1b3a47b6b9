//! The calls soak (issue 10; not part of the suite): browsers in one room through the real
//! stack (`rtcd-dev`) for minutes, with a change every few seconds (leave and rejoin, mute,
//! camera off / on, screen share start / stop), then every media gap over a threshold (1 s
//! by default) per participant and track, and the time to first remote frame.
//!
//! Runs in a network namespace of its own ([`rtcd_e2e::netns`]: needs root), like the calls
//! tests; the page is served on 127.0.0.1, media flows over the namespace's veth pair.
//!
//! ```text
//! soak --chromium 4 --firefox 2 --minutes 10 --change-every 5
//! ```
//!
//! Exit status: 0 when nothing stalled, 1 when something did (the report says what), 2 when
//! the run itself failed.

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use rtcd_e2e::browser::{BROWSER_STEP, BrowserKind, BrowserPage, Browsers, artifacts_dir};
use rtcd_e2e::flow::{self, Flow, PageId, Thresholds};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(
    about = "Browsers in one call for minutes with a change every few seconds; reports media gaps"
)]
struct Args {
    /// Chromium participants.
    #[arg(long, default_value_t = 4)]
    chromium: usize,
    /// Firefox participants.
    #[arg(long, default_value_t = 2)]
    firefox: usize,
    /// How long the call lasts (minutes; fractions allowed).
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Seconds between two changes.
    #[arg(long, default_value_t = 5.0)]
    change_every: f64,
    /// A gap longer than this (ms) in a flowing track is reported.
    #[arg(long, default_value_t = 1000)]
    gap_ms: u64,
    /// Seed of the change sequence (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
}

/// One browser and its current place in the call.
struct Seat {
    page: BrowserPage,
    name: String,
    /// The page's current [`Flow`] id (a rejoin gets a new one).
    id: PageId,
    joins: usize,
    mic: bool,
    camera: bool,
    screen: bool,
}

/// A small deterministic generator for the change sequence (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

struct Soak {
    url: String,
    browsers: Browsers,
    seats: Vec<Seat>,
    flow: Flow,
    /// Flow id -> seat.
    seat_of: Vec<usize>,
}

impl Soak {
    async fn pull(&mut self) -> anyhow::Result<()> {
        let pages: Vec<&BrowserPage> = self.seat_of.iter().map(|s| &self.seats[*s].page).collect();
        self.flow.pull(&pages).await
    }

    async fn hold(&mut self, duration: Duration) -> anyhow::Result<()> {
        let pages: Vec<&BrowserPage> = self.seat_of.iter().map(|s| &self.seats[*s].page).collect();
        self.flow.hold(&pages, duration).await
    }

    /// Loads the call page in seat `seat` (a join, or a rejoin after leaving).
    async fn join(&mut self, seat: usize) -> anyhow::Result<()> {
        let s = &mut self.seats[seat];
        s.joins += 1;
        let label = format!("{}-{}", s.name, s.joins);
        s.page
            .goto(&format!("{}&name={}", self.url, s.name))
            .await?;
        let id = self.flow.watch(&s.page, &label).await?;
        s.page.wait_state("connected").await?;
        (s.id, s.mic, s.camera, s.screen) = (id, true, true, false);
        self.seat_of.push(seat);
        Ok(())
    }

    async fn click(&self, seat: usize, button: &str) -> anyhow::Result<()> {
        let page = &self.seats[seat].page;
        page.wait_for(
            &format!("!document.getElementById({}).disabled", json!(button)),
            BROWSER_STEP,
        )
        .await?;
        page.click(button).await
    }

    /// One change, chosen by `rng`; returns what it did.
    async fn change(&mut self, rng: &mut Rng) -> anyhow::Result<String> {
        let seat = rng.below(self.seats.len());
        let (kind, id) = (self.seats[seat].page.kind(), self.seats[seat].id);
        let name = self.seats[seat].name.clone();
        // Headless Firefox has no screen to share.
        let choices: &[&str] = if kind == BrowserKind::Chromium {
            &["mic", "camera", "screen", "rejoin"]
        } else {
            &["mic", "camera", "rejoin"]
        };
        let action = choices[rng.below(choices.len())];
        match action {
            "mic" | "camera" | "screen" => {
                let (source, on) = match action {
                    "mic" => ("microphone", &mut self.seats[seat].mic),
                    "camera" => ("camera", &mut self.seats[seat].camera),
                    _ => ("screen", &mut self.seats[seat].screen),
                };
                let turn_on = !*on;
                *on = turn_on;
                if turn_on {
                    self.click(seat, action).await?;
                    self.flow.source_on(id, source);
                } else {
                    self.flow.source_off(id, source);
                    self.click(seat, action).await?;
                }
                Ok(format!(
                    "{name} {source} {}",
                    if turn_on { "on" } else { "off" }
                ))
            }
            _ => {
                self.pull().await?;
                self.flow.left(id);
                self.click(seat, "leave").await?;
                self.seats[seat].page.wait_state("closed").await?;
                self.join(seat).await?;
                Ok(format!("{name} left and rejoined"))
            }
        }
    }
}

async fn soak(args: Args) -> anyhow::Result<bool> {
    let dir = tempfile::tempdir()?;
    let stack = rtcd_dev::start(rtcd_dev::Options {
        data_dir: dir.path().to_owned(),
        listen: "127.0.0.1:0".into(),
        loopback: false,
        udp_port: 0,
        rtc: Vec::new(),
    })
    .await?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1
    });
    println!("soak: seed {seed}, rtcd-dev at {}", stack.proxy.addr());
    let mut rng = Rng(seed);
    let mut soak = Soak {
        url: format!("http://{}/?room=soak", stack.proxy.addr()),
        browsers: Browsers::lan(),
        seats: Vec::new(),
        flow: Flow::new(),
        seat_of: Vec::new(),
    };
    let kinds = std::iter::repeat_n(BrowserKind::Chromium, args.chromium)
        .chain(std::iter::repeat_n(BrowserKind::Firefox, args.firefox));
    for (i, kind) in kinds.enumerate() {
        let page = soak.browsers.page(kind).await?;
        soak.seats.push(Seat {
            page,
            name: format!("p{i}-{kind}"),
            id: 0,
            joins: 0,
            mic: true,
            camera: true,
            screen: false,
        });
        soak.join(i).await?;
        println!("soak: {} joined", soak.seats[i].name);
    }
    let started = tokio::time::Instant::now();
    let length = Duration::from_secs_f64(args.minutes * 60.0);
    let every = Duration::from_secs_f64(args.change_every);
    let mut changes = 0;
    while started.elapsed() < length {
        soak.hold(every).await?;
        let what = soak.change(&mut rng).await.context("a change")?;
        changes += 1;
        println!("soak: {:>6.1} s  {what}", started.elapsed().as_secs_f64());
    }
    soak.hold(every).await?;
    let report = soak.flow.report(Thresholds {
        gap: Duration::from_millis(args.gap_ms),
        start: Thresholds::CALLS.start,
    });
    println!(
        "soak: {} participants, {changes} changes in {:.0} s\n{report}",
        soak.seats.len(),
        started.elapsed().as_secs_f64()
    );
    let clean = report.is_clean();
    if !clean {
        for seat in &soak.seats {
            let _ = seat
                .page
                .screenshot(&artifacts_dir().join(format!("soak-{}.png", seat.name)))
                .await;
            println!("{}: {}", seat.name, flow::diagnose(&seat.page).await);
        }
    }
    for seat in soak.seats.drain(..) {
        let _ = seat.page.close().await;
    }
    drop(soak);
    stack.shutdown().await;
    Ok(clean)
}

fn main() {
    let args = Args::parse();
    match rtcd_e2e::netns::run(move || soak(args)) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("soak: {e:#}");
            std::process::exit(2);
        }
    }
}
