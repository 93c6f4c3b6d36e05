// Starts ReDoc on /redoc (a file, not an inline script, so the page's CSP needs no inline scripts).
window.addEventListener("load", function () {
  var root = document.getElementById("redoc");
  Redoc.init(root.dataset.openapiUrl, {}, root);
});
