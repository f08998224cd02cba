//! Bus throughput through Lookout's typed API: produce and consume `Frame`s of a given encoded
//! size, protobuf encoding and decoding included. One JSON line per measurement on stdout.
//!
//! ```sh
//! cargo bench -p lookout-bus --bench bus -- --brokers 127.0.0.1:9092 --size 100 --messages 100000
//! ```
//!
//! Each repeat works in a fresh topic prefix (`{prefix}r{i}.`): one warm-up frame is sent and
//! acknowledged first (it creates the topic and connects the producer), then `--messages`
//! frames are timed from the first enqueue until every one is acknowledged. A new consumer
//! group then reads the topic from the beginning, timed from the first handled frame (the
//! warm-up) to the last, so group start-up is not counted. `bench/bus/bench_confluent.py` does
//! the same with Python confluent-kafka; `bench/bus/run.py` runs both.

use std::{
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use lookout_bus::{Bus, BusConfig, BusError, Compression, Incoming, admin, topics};
use lookout_proto::{
    Timestamp,
    v1::{Encoding, Frame},
};
use prost::Message as _;
use tokio_util::sync::CancellationToken;

/// First sequence number: its varint has the same length (4 bytes) for every frame sent.
const FIRST_SEQUENCE: u64 = 1 << 21;
/// How long a consume run may take before the bench gives up (messages lost to retention).
const CONSUME_TIMEOUT: Duration = Duration::from_secs(120);

struct Args {
    brokers: String,
    size: usize,
    messages: u64,
    prefix: String,
    repeat: u32,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        brokers: "127.0.0.1:9092".into(),
        size: 100,
        messages: 100_000,
        prefix: format!("bench-{}.", std::process::id()),
        repeat: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--bench" {
            continue; // passed by `cargo bench`
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |_| format!("bad value for {flag}: {value}");
        match flag.as_str() {
            "--brokers" => args.brokers = value,
            "--size" => args.size = value.parse().map_err(bad)?,
            "--messages" => args.messages = value.parse().map_err(bad)?,
            "--prefix" => args.prefix = value,
            "--repeat" => args.repeat = value.parse().map_err(bad)?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(args)
}

/// A frame whose encoded size is exactly `size` bytes (for sizes above ~30).
fn frame_of_size(size: usize) -> Frame {
    let mut frame = Frame {
        camera_id: "bench".into(),
        sequence: FIRST_SEQUENCE,
        capture_time: Some(Timestamp { seconds: 1_800_000_000, nanos: 0 }),
        width: 640,
        height: 480,
        encoding: Encoding::Jpeg as i32,
        data: Bytes::new(),
    };
    let mut len = size.saturating_sub(frame.encoded_len());
    while len > 0 {
        frame.data = Bytes::from(vec![0x5a; len]);
        if frame.encoded_len() <= size {
            break;
        }
        len -= 1;
    }
    frame
}

/// One measurement as a JSON line.
fn report(op: &str, size: usize, messages: u64, seconds: f64) {
    let rate = messages as f64 / seconds;
    println!(
        r#"{{"impl":"lookout-rust","op":"{op}","size":{size},"messages":{messages},"seconds":{seconds:.6},"msg_per_s":{rate:.1},"mb_per_s":{:.3}}}"#,
        rate * size as f64 / 1e6
    );
}

/// Sends the warm-up frame, then `n` timed frames; returns the timed seconds.
async fn produce(bus: &Bus, frame: &Frame, n: u64) -> Result<f64, BusError> {
    let publisher = bus.publisher(&topics::FRAMES);
    publisher.send(&Frame { sequence: FIRST_SEQUENCE - 1, ..frame.clone() }).await?;
    let mut frame = frame.clone();
    let mut pending = Vec::with_capacity(n as usize);
    let started = Instant::now();
    for i in 0..n {
        frame.sequence = FIRST_SEQUENCE + i;
        pending.push(publisher.enqueue(&frame, None).await?);
    }
    for p in pending {
        p.wait().await?;
    }
    // Every frame is acknowledged: stop the clock before `flush`, which has nothing left to
    // do but sometimes sleeps up to 100 ms in rdkafka's flush loop.
    let seconds = started.elapsed().as_secs_f64();
    bus.flush(Duration::from_secs(30))?;
    Ok(seconds)
}

/// Messages of the frames topic still retained, and whether any were dropped.
async fn retained(bus: &Bus) -> Result<(u64, bool), BusError> {
    let name = bus.topic_name(topics::FRAMES.name());
    let topic = admin::describe(bus).await?.into_iter().find(|t| t.name == name);
    let partitions = topic.map(|t| t.partitions).unwrap_or_default();
    let kept = partitions.iter().map(|p| (p.high - p.low) as u64).sum();
    Ok((kept, partitions.iter().any(|p| p.low > 0)))
}

/// Consumes `total` frames in a new group; returns the seconds from the first to the last.
async fn consume(bus: &Bus, total: u64, data_len: usize) -> Result<f64, String> {
    let count = Arc::new(AtomicU64::new(0));
    let misshapen = Arc::new(AtomicU64::new(0));
    let span = Arc::new(Mutex::new((None::<Instant>, None::<Instant>)));
    let shutdown = CancellationToken::new();
    let handler = {
        let (count, misshapen) = (count.clone(), misshapen.clone());
        let (span, shutdown) = (span.clone(), shutdown.clone());
        move |m: Incoming<Frame>| {
            let (count, misshapen) = (count.clone(), misshapen.clone());
            let (span, shutdown) = (span.clone(), shutdown.clone());
            async move {
                if m.message.data.len() != data_len {
                    misshapen.fetch_add(1, Ordering::Relaxed);
                }
                let done = count.fetch_add(1, Ordering::Relaxed) + 1;
                if done == 1 {
                    span.lock().expect("not poisoned").0 = Some(Instant::now());
                }
                if done == total {
                    span.lock().expect("not poisoned").1 = Some(Instant::now());
                    shutdown.cancel();
                }
                Ok(())
            }
        }
    };
    let group = format!("{}bench", bus.config().topic_prefix);
    let subscriber = bus.subscriber(&topics::FRAMES, &group);
    let timer = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(CONSUME_TIMEOUT).await;
            shutdown.cancel();
        })
    };
    subscriber.run(handler, shutdown).await.map_err(|e| e.to_string())?;
    timer.abort();
    let handled = count.load(Ordering::Relaxed);
    let misshapen = misshapen.load(Ordering::Relaxed);
    if misshapen > 0 {
        return Err(format!("{misshapen} frames decoded with the wrong data length"));
    }
    match *span.lock().expect("not poisoned") {
        (Some(first), Some(last)) if handled == total => Ok((last - first).as_secs_f64()),
        _ => Err(format!("handled {handled} of {total} frames in {CONSUME_TIMEOUT:?}")),
    }
}

async fn run(args: &Args) -> Result<(), String> {
    let frame = frame_of_size(args.size);
    let size = frame.encoded_len();
    let (mut produced, mut produce_s, mut consumed, mut consume_s) = (0, 0.0, 0, 0.0);
    for r in 0..args.repeat {
        let mut config = BusConfig::new(args.brokers.clone(), "lookout-bench")
            .with_topic_prefix(format!("{}r{r}.", args.prefix));
        config.compression = Compression::None;
        let bus = Bus::new(config).map_err(|e| e.to_string())?;
        produce_s += produce(&bus, &frame, args.messages).await.map_err(|e| e.to_string())?;
        produced += args.messages;

        let (kept, dropped) = retained(&bus).await.map_err(|e| e.to_string())?;
        if dropped || kept != args.messages + 1 {
            eprintln!(
                "retention: {kept} of {} frames kept on {}; consuming those",
                args.messages + 1,
                bus.topic_name(topics::FRAMES.name()),
            );
        }
        // The first frame handled starts the clock, so `kept - 1` frames are timed.
        consume_s += consume(&bus, kept, frame.data.len()).await?;
        consumed += kept - 1;
    }
    report("produce", size, produced, produce_s);
    report("consume", size, consumed, consume_s);
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bus bench: {e}");
            eprintln!(
                "usage: bus [--brokers ADDR] [--size BYTES] [--messages N] [--prefix P] [--repeat R]"
            );
            return ExitCode::from(64);
        }
    };
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bus bench: {e}");
            ExitCode::FAILURE
        }
    }
}
