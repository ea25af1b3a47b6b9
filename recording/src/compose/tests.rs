//! Unit tests of [`plan`]: layouts, offsets, the graph's shape, refusals. No ffmpeg.

use super::*;
use crate::manifest::{ClockSource, Codec, Participant, State, Track};

const T0: f64 = 1_764_000_000_000.0;

fn track(file: &str, who: &str, source: Source, start_s: f64, end_s: f64) -> Track {
    Track {
        file: file.to_owned(),
        participant: Participant {
            session: format!("s-{who}"),
            user: who.to_owned(),
            display_name: who.to_owned(),
        },
        track_id: file.to_owned(),
        source,
        codec: if source.is_audio() {
            Codec::Opus
        } else {
            Codec::Vp8
        },
        start_ms: T0 + start_s * 1000.0,
        clock: ClockSource::SenderReport,
        duration_ms: ((end_s - start_s) * 1000.0) as u64,
        bytes: 1,
        frames: 1,
        keyframes: 1,
        dropped_packets: 0,
        width: None,
        height: None,
        speech: Vec::new(),
        complete: true,
    }
}

fn manifest(tracks: Vec<Track>) -> Manifest {
    Manifest {
        version: manifest::VERSION,
        recording_id: "rec_aaaaaaaaaaaaaaaaaaaaaaaaaa".to_owned(),
        room: "room".to_owned(),
        segment: 1,
        host: "host".to_owned(),
        started_by: String::new(),
        started_at_ms: T0 as i64,
        stopped_at_ms: None,
        state: State::Stopped,
        stop_reason: None,
        degraded: false,
        error: None,
        tracks,
    }
}

fn cameras(n: usize) -> Vec<Track> {
    (0..n)
        .map(|i| {
            track(
                &format!("cam{i}.webm"),
                &format!("p{i}"),
                Source::Camera,
                0.0,
                10.0,
            )
        })
        .collect()
}

fn distinct(mut v: Vec<u32>) -> usize {
    v.sort_unstable();
    v.dedup();
    v.len()
}

fn overlaps(a: Rect, b: Rect) -> bool {
    a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h
}

fn check_inside_and_apart(tiles: &[Tile], o: &Options) {
    for (i, a) in tiles.iter().enumerate() {
        assert!(a.rect.x + a.rect.w <= o.width && a.rect.y + a.rect.h <= o.height);
        assert!(a.rect.w % 2 == 0 && a.rect.h % 2 == 0, "{a:?}");
        for b in &tiles[i + 1..] {
            assert!(!overlaps(a.rect, b.rect), "{a:?} overlaps {b:?}");
        }
    }
}

#[test]
fn grid_sizes_for_one_to_nine_cameras() {
    // (columns, rows) for n tiles: ceil(sqrt(n)) columns.
    let expected = [
        (1, 1),
        (2, 1),
        (2, 2),
        (2, 2),
        (3, 2),
        (3, 2),
        (3, 3),
        (3, 3),
        (3, 3),
    ];
    let o = Options::default();
    for (k, &(cols, rows)) in expected.iter().enumerate() {
        let n = k + 1;
        let p = plan(&manifest(cameras(n)), &o).expect("plan");
        assert_eq!(p.segments.len(), 1, "n={n}");
        let s = &p.segments[0];
        assert_eq!((s.from_ms, s.to_ms, s.layout), (0, 10_000, Layout::Grid));
        assert_eq!(s.tiles.len(), n);
        let ws = s.tiles.iter().map(|t| t.rect.w).collect::<Vec<_>>();
        assert_eq!(distinct(ws), 1, "n={n}: one tile size");
        assert_eq!(s.tiles[0].rect.w, (o.width / cols as u32) & !1, "n={n}");
        assert_eq!(s.tiles[0].rect.h, (o.height / rows as u32) & !1, "n={n}");
        let ys = s.tiles.iter().map(|t| t.rect.y).collect();
        assert_eq!(distinct(ys), rows, "n={n}: rows");
        check_inside_and_apart(&s.tiles, &o);
        assert_eq!(p.inputs.len(), n);
        assert_eq!(p.filter_complex.matches("overlay=").count(), n);
    }
}

#[test]
fn partial_last_row_is_centred() {
    let o = Options::default();
    let p = plan(&manifest(cameras(3)), &o).expect("plan");
    let last = p.segments[0].tiles[2].rect;
    assert_eq!(last.x, (o.width - last.w) / 2);
}

#[test]
fn screen_share_takes_the_main_area_while_it_exists() {
    let mut tracks = cameras(2);
    tracks.push(track("screen.webm", "p0", Source::Screen, 4.0, 7.0));
    let o = Options::default();
    let p = plan(&manifest(tracks), &o).expect("plan");
    let kinds: Vec<_> = p
        .segments
        .iter()
        .map(|s| (s.from_ms, s.to_ms, s.layout))
        .collect();
    assert_eq!(
        kinds,
        [
            (0, 4_000, Layout::Grid),
            (4_000, 7_000, Layout::Screen),
            (7_000, 10_000, Layout::Grid)
        ]
    );
    let screen = &p.segments[1];
    let main_w = o.width * MAIN_AREA_PERCENT / 100;
    let by_track = |i: usize| {
        screen
            .tiles
            .iter()
            .find(|t| t.track == i)
            .expect("tile")
            .rect
    };
    assert_eq!(
        by_track(2),
        Rect {
            x: 0,
            y: 0,
            w: main_w,
            h: o.height
        }
    );
    for cam in [0, 1] {
        let r = by_track(cam);
        assert_eq!((r.x, r.w), (main_w, o.width - main_w));
        assert_eq!(r.h, o.height / 2);
    }
    check_inside_and_apart(&screen.tiles, &o);
    // The cameras' size changes at 4 s and back at 7 s: in the scale expression.
    assert!(
        p.filter_complex
            .contains("if(lt(t,4.000),640,if(lt(t,7.000),320,640))"),
        "{}",
        p.filter_complex
    );
}

#[test]
fn screen_alone_is_full_frame_and_many_cameras_get_two_side_columns() {
    let o = Options::default();
    let p = plan(
        &manifest(vec![track("s.webm", "a", Source::Screen, 0.0, 5.0)]),
        &o,
    )
    .expect("plan");
    assert_eq!(p.segments[0].layout, Layout::Screen);
    assert_eq!(
        p.segments[0].tiles[0].rect,
        Rect {
            x: 0,
            y: 0,
            w: o.width,
            h: o.height
        }
    );

    let mut tracks = cameras(6);
    tracks.push(track("s.webm", "p0", Source::Screen, 0.0, 10.0));
    let p = plan(&manifest(tracks), &o).expect("plan");
    let side: Vec<Rect> = p.segments[0].tiles[..6].iter().map(|t| t.rect).collect();
    assert_eq!(distinct(side.iter().map(|r| r.x).collect()), 2);
    check_inside_and_apart(&p.segments[0].tiles, &o);
}

#[test]
fn active_speaker_gets_the_big_tile_and_keeps_it_through_silence() {
    let mut alice_mic = track("a-mic.webm", "alice", Source::Microphone, 0.0, 10.0);
    alice_mic.speech = vec![[2_000, 3_000], [3_500, 5_000]]; // joined: 2..5 s
    let mut bob_mic = track("b-mic.webm", "bob", Source::Microphone, 1.0, 10.0);
    bob_mic.speech = vec![[5_000, 8_000], [8_500, 8_700]]; // file time: 6..9 s
    let tracks = vec![
        track("a-cam.webm", "alice", Source::Camera, 0.0, 10.0),
        alice_mic,
        track("b-cam.webm", "bob", Source::Camera, 0.0, 10.0),
        bob_mic,
    ];
    let o = Options::default();
    let p = plan(&manifest(tracks), &o).expect("plan");
    let kinds: Vec<_> = p
        .segments
        .iter()
        .map(|s| (s.from_ms, s.to_ms, s.layout))
        .collect();
    assert_eq!(
        kinds,
        [
            (0, 2_000, Layout::Grid),
            (2_000, 6_000, Layout::Speaker),
            (6_000, 10_000, Layout::Speaker)
        ]
    );
    let main_w = o.width * MAIN_AREA_PERCENT / 100;
    let big = |s: &Segment| {
        s.tiles
            .iter()
            .find(|t| t.rect.w == main_w)
            .expect("a big tile")
            .track
    };
    assert_eq!(big(&p.segments[1]), 0, "alice from 2 s");
    assert_eq!(
        big(&p.segments[2]),
        2,
        "bob from 6 s, still after his speech ends"
    );
    // Audio: both microphones mixed without normalisation.
    assert!(
        p.filter_complex
            .contains("amix=inputs=2:normalize=0:duration=longest")
    );
}

#[test]
fn short_speech_does_not_move_the_picture() {
    let mut mic = track("b-mic.webm", "bob", Source::Microphone, 0.0, 10.0);
    mic.speech = vec![[3_000, 3_400]];
    let mut tracks = cameras(2);
    tracks[1].participant.session = "s-bob".to_owned();
    tracks.push(mic);
    let p = plan(&manifest(tracks), &Options::default()).expect("plan");
    assert_eq!(p.segments.len(), 1);
    assert_eq!(p.segments[0].layout, Layout::Grid);
}

#[test]
fn offsets_and_duration_follow_start_ms() {
    let tracks = vec![
        track("late.webm", "bob", Source::Camera, 2.5, 8.0),
        track("first.webm", "alice", Source::Microphone, 0.0, 10.0),
        track("last.webm", "carol", Source::Camera, 9.0, 12.25),
    ];
    let p = plan(&manifest(tracks), &Options::default()).expect("plan");
    assert_eq!(p.duration_ms, 12_250);
    let offsets: Vec<_> = p
        .inputs
        .iter()
        .map(|i| (i.file.as_str(), i.offset_ms, i.video))
        .collect();
    assert_eq!(
        offsets,
        [
            ("late.webm", 2_500, true),
            ("first.webm", 0, false),
            ("last.webm", 9_000, true)
        ]
    );
    let args: Vec<String> = p
        .args(Path::new("/rec"), Path::new("/out.mp4"), Graph::Inline)
        .into_iter()
        .map(|a| a.into_string().expect("utf-8"))
        .collect();
    let joined = args.join(" ");
    assert!(joined.starts_with("-nostdin -y -v error -itsoffset 2.500 -i /rec/late.webm"));
    assert!(joined.contains("-itsoffset 9.000 -i /rec/last.webm"));
    assert!(
        joined.ends_with("-movflags +faststart -t 12.250 /out.mp4"),
        "{joined}"
    );
    assert!(
        p.filter_complex
            .contains("color=c=black:s=1280x720:r=25:d=12.250")
    );
    assert!(p.filter_complex.contains("enable='between(t,2.500,8.000)'"));
    assert!(p.filter_complex.contains("apad=whole_dur=12.250"));
}

#[test]
fn audio_only_is_black_and_heard() {
    let tracks = vec![
        track("a.webm", "alice", Source::Microphone, 0.0, 4.0),
        track("b.webm", "bob", Source::Microphone, 1.0, 3.0),
    ];
    let p = plan(&manifest(tracks), &Options::default()).expect("plan");
    assert_eq!(p.segments.len(), 1);
    assert_eq!(p.segments[0].layout, Layout::Empty);
    assert!(!p.filter_complex.contains("overlay"));
    assert!(
        p.filter_complex
            .contains("[0:a]aresample=48000:async=1:first_pts=0[a0]")
    );
    assert!(
        p.filter_complex
            .contains("[a0][a1]amix=inputs=2:normalize=0")
    );
    assert!(p.filter_complex.contains("[canvas0]format=yuv420p[vout]"));
}

#[test]
fn video_only_gets_silence() {
    let p = plan(&manifest(cameras(1)), &Options::default()).expect("plan");
    assert!(p.filter_complex.contains("anullsrc=r=48000:cl=stereo"));
}

#[test]
fn refusals() {
    let o = Options::default();
    assert!(matches!(
        plan(&manifest(Vec::new()), &o),
        Err(ComposeError::NoTracks)
    ));
    let mut m = manifest(cameras(1));
    m.version = 2;
    assert!(matches!(
        plan(&m, &o),
        Err(ComposeError::UnsupportedVersion { found: 2 })
    ));
    for bad in ["../x.webm", "a/b.webm", "a\\b.webm", "..", "", "."] {
        let mut tracks = cameras(2);
        tracks[1].file = bad.to_owned();
        match plan(&manifest(tracks), &o) {
            Err(ComposeError::UnsafeFileName { index: 1, name }) => assert_eq!(name, bad),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    let mut tracks = cameras(1);
    tracks[0].start_ms = f64::NAN;
    assert!(matches!(
        plan(&manifest(tracks), &o),
        Err(ComposeError::InvalidStart { .. })
    ));
    let mut tracks = cameras(1);
    tracks[0].duration_ms = 0;
    assert!(matches!(
        plan(&manifest(tracks), &o),
        Err(ComposeError::NoMedia)
    ));
    let odd = Options {
        width: 1279,
        ..Options::default()
    };
    assert!(matches!(
        plan(&manifest(cameras(1)), &odd),
        Err(ComposeError::InvalidOptions(_))
    ));
}
