import { defineConfig } from "vite";

// The console is served by the gateway at /ui from app/ui/static (committed, package data).
// File names are fixed, not content hashes, so a rebuild of the same sources gives the same
// files and .ci/run can tell a stale build by comparing them.
export default defineConfig({
  base: "/ui/",
  build: {
    outDir: "../app/ui/static",
    emptyOutDir: true,
    target: "es2022",
    modulePreload: { polyfill: false },
    cssCodeSplit: false,
    reportCompressedSize: false,
    rollupOptions: {
      output: {
        entryFileNames: "assets/console.js",
        chunkFileNames: "assets/[name].js",
        assetFileNames: "assets/[name][extname]",
        inlineDynamicImports: true,
      },
    },
  },
});
