// An HTTPS client on Go's net/http and crypto/tls (no OpenSSL): go_https_client PORT PATH...
// waits for a line on stdin (the test's go: its executable is probed by then), then GETs every
// path (a path starting with "POST " is POSTed a body instead) over one keep-alive HTTP/1.1
// connection, and prints one "METHOD PATH STATUS" line per request.
package main

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
)

func main() {
	client := &http.Client{Transport: &http.Transport{
		// A custom TLS config without ForceAttemptHTTP2: HTTP/1.1 only.
		TLSClientConfig:     &tls.Config{InsecureSkipVerify: true},
		MaxIdleConnsPerHost: 1,
	}}
	bufio.NewReader(os.Stdin).ReadString('\n')
	base := "https://127.0.0.1:" + os.Args[1]
	for _, arg := range os.Args[2:] {
		method, path := "GET", arg
		var body io.Reader
		if strings.HasPrefix(arg, "POST ") {
			method, path = "POST", strings.TrimPrefix(arg, "POST ")
			body = strings.NewReader("a body of some bytes")
		}
		req, err := http.NewRequest(method, base+path, body)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		resp, err := client.Do(req)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		fmt.Printf("%s %s %d\n", method, path, resp.StatusCode)
	}
}
