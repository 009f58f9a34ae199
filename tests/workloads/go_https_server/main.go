// An HTTPS server on Go's net/http and crypto/tls (no OpenSSL): go_https_server PORT CERT KEY [h2].
// HTTP/1.1 only (no "h2" in ALPN), or with "h2" HTTP/2 too (net/http's own, offered first). Routes: /users/<n> 200, /big 200 with a 100 KB chunked body,
// /fail 500, POST /echo 201 with the body's length, anything else 404.
package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
)

func main() {
	mux := http.NewServeMux()
	mux.HandleFunc("/users/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "user %s\n", strings.TrimPrefix(r.URL.Path, "/users/"))
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		// No Content-Length and more than the response buffer: chunked, over many TLS writes.
		piece := []byte(strings.Repeat("x", 1000) + "\n")
		for i := 0; i < 100; i++ {
			w.Write(piece)
		}
	})
	mux.HandleFunc("/fail", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "failed on purpose", http.StatusInternalServerError)
	})
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "POST only", http.StatusMethodNotAllowed)
			return
		}
		n, _ := io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, "%d bytes\n", n)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		http.NotFound(w, r)
	})
	server := &http.Server{
		Addr:    "127.0.0.1:" + os.Args[1],
		Handler: mux,
		// A non-nil, empty map turns HTTP/2 off: HTTP/1.1 over TLS only.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
	}
	if len(os.Args) > 4 && os.Args[4] == "h2" {
		server.TLSNextProto = nil
	}
	if err := server.ListenAndServeTLS(os.Args[2], os.Args[3]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
