// Package docs holds the documentation pages of the service (Markdown, in
// this directory) and the test that keeps them true: every relative link
// of the top-level pages and of docs/*.md resolves to a file (and a
// heading, for an anchor), nothing links out of the repository, and the
// shell blocks of quickstart.md and local-cluster.md run on a fresh build.
package docs
