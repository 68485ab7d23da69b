// web-server: a small HTTP service, the shape pytest-flake is made to test.
package main

import (
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"os"
)

var version = "1.0"

func main() {
	addr := os.Getenv("LISTEN") // [ADDRESS]:PORT
	if addr == "" {
		port := os.Getenv("PORT")
		if port == "" {
			port = "3031"
		}
		addr = "127.0.0.1:" + port
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "web-server %s\n", version)
	})
	http.HandleFunc("/info", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]string{
			"name": "web-server", "version": version, "portable": os.Getenv("PORTABLE"),
		})
	})
	log.Printf("web-server %s listening on %s", version, addr)
	log.Fatal(http.ListenAndServe(addr, nil))
}
