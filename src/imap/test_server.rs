//! A scripted IMAP server over an in-memory pipe, for unit tests of the session-driving
//! code (IDLE and FETCH).

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, ReadHalf, WriteHalf};

use crate::imap::{Io, Session};

/// The server end of an in-memory connection.
pub(crate) struct Server {
    r: BufReader<ReadHalf<DuplexStream>>,
    w: WriteHalf<DuplexStream>,
}

impl Server {
    /// The next line the client sent, without its CRLF.
    pub(crate) async fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).await.expect("client line");
        l.trim_end().to_string()
    }

    /// The tag of the next command, checking its name.
    pub(crate) async fn command(&mut self, name: &str) -> String {
        let l = self.line().await;
        let (tag, rest) = l.split_once(' ').expect("tagged");
        assert!(rest.starts_with(name), "{l:?}, wanted {name}");
        tag.to_string()
    }

    pub(crate) async fn send(&mut self, text: &str) {
        self.w.write_all(text.as_bytes()).await.expect("send");
    }
}

/// A logged-in session over a 4 MiB in-memory pipe, and the server end.
pub(crate) async fn session() -> (Session, Server) {
    let (client, server) = tokio::io::duplex(4 << 20);
    let (r, w) = tokio::io::split(server);
    let mut server = Server {
        r: BufReader::new(r),
        w,
    };
    let client = async_imap::Client::new(Box::new(client) as Box<dyn Io>);
    let login = tokio::spawn(async move {
        client
            .login("u", "p")
            .await
            .map_err(|(e, _)| e)
            .expect("login")
    });
    let tag = server.command("LOGIN").await;
    server.send(&format!("{tag} OK logged in\r\n")).await;
    (login.await.expect("login task"), server)
}
