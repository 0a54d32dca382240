// Command go-demo prints the most frequent words of its standard input: a
// small module for granary's demo (scripts/demo.sh).
package main

import (
	"log"
	"os"

	"example.com/go-demo/report"
	"example.com/go-demo/wordcount"
)

func main() {
	counts, err := wordcount.Count(os.Stdin)
	if err != nil {
		log.Fatal(err)
	}
	report.Top(os.Stdout, counts, 5)
}
