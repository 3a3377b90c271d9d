//! A lean HTTP/1.1 client over one kept-alive connection (hyper's connection API), so that
//! the load generator costs the shared cores as little as possible.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use crate::Failure;

pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Result<Conn, Failure> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Conn {
            sender,
            host: addr.to_string(),
        })
    }

    pub async fn get(
        &mut self,
        path: &str,
        prefer: Option<&str>,
    ) -> Result<Response<Bytes>, Failure> {
        let mut request = Request::get(path).header("host", &self.host);
        if let Some(prefer) = prefer {
            request = request.header("prefer", prefer);
        }
        self.send(request.body(Full::new(Bytes::new()))?).await
    }

    pub async fn post(
        &mut self,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<Response<Bytes>, Failure> {
        let request = Request::post(path)
            .header("host", &self.host)
            .header("content-type", content_type)
            .body(Full::new(body))?;
        self.send(request).await
    }

    async fn send(&mut self, request: Request<Full<Bytes>>) -> Result<Response<Bytes>, Failure> {
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Response::from_parts(parts, body))
    }
}
