//! The connector deliveries go through: hyper-rustls' HTTPS-or-HTTP connector whose
//! connections leave out the connection info (`HttpInfo`: peer and local address)
//! that hyper-util's client would otherwise copy into the extensions of every
//! response. Nothing here reads it, and the copy cost two allocations and about 600
//! instructions per delivery (docs/benchmarks.md). ALPN (HTTP/2) and proxy flags are
//! kept.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::future::{MapOk, TryFutureExt};
use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

type Inner = HttpsConnector<HttpConnector>;
type Stream = MaybeHttpsStream<TokioIo<TcpStream>>;

/// Connects like the HTTPS connector it wraps; see the module docs.
#[derive(Clone)]
pub struct Connector(Inner);

impl Connector {
    /// Wraps a connector.
    pub fn new(inner: Inner) -> Connector {
        Connector(inner)
    }
}

impl Service<Uri> for Connector {
    type Response = Conn;
    type Error = <Inner as Service<Uri>>::Error;
    type Future = MapOk<<Inner as Service<Uri>>::Future, fn(Stream) -> Conn>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        self.0.call(uri).map_ok(Conn as fn(Stream) -> Conn)
    }
}

/// A connection made by [`Connector`].
pub struct Conn(Stream);

impl Connection for Conn {
    fn connected(&self) -> Connected {
        let inner = self.0.connected();
        let connected = Connected::new().proxy(inner.is_proxied());
        if inner.is_negotiated_h2() {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl Read for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl Write for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::client::legacy::connect::HttpInfo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Requests go through (plain HTTP here; TLS is `deliver`'s test), and responses
    /// no longer carry the connection info.
    #[tokio::test]
    async fn delivers_without_connection_info() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = sock.read(&mut buf).await.expect("read");
                assert!(n > 0, "request cut short");
                got.extend_from_slice(&buf[..n]);
            }
            sock.write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
                .await
                .expect("write");
            got
        });
        let client = crate::deliver::client();
        let req = http::Request::get(format!("http://{addr}/x"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = client.request(req).await.expect("response");
        assert_eq!(resp.status(), http::StatusCode::ACCEPTED);
        assert!(resp.extensions().get::<HttpInfo>().is_none());
        let got = server.await.expect("server");
        assert!(got.starts_with(b"GET /x HTTP/1.1\r\n"), "{got:?}");
    }
}
