//! The least an HTTP server on hyper does for a GET: the same runtime and
//! connection builder as `granary serve`, and an answer of SIZE bytes
//! (1,000 unless told) from memory, with no routing, no index and no file.
//! What `bench/http_floor.py` measures against granary serve and nginx:
//! the part of a GET that granary's own work cannot win back.
//!
//!     cargo run --release -p granary-server --example http_floor -- 127.0.0.1:8080 [SIZE]

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

fn main() {
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let size = args.next().map_or(1000, |size| {
        size.parse()
            .unwrap_or_else(|e| panic!("SIZE is a number of bytes, not {size:?}: {e}"))
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .unwrap_or_else(|e| panic!("cannot listen on {address}: {e}"));
        let body = Bytes::from(vec![b'x'; size]);
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let answer =
                    hyper::service::service_fn(move |_: Request<hyper::body::Incoming>| {
                        let body = body.clone();
                        async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                    });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), answer)
                    .await;
            });
        }
    });
}
